"""The sweep: make every expiry due at or before a tick durable, with its events.

``expire_due(store, tick)`` is what the scheduler calls at each :00 / :30 (and for every
missed tick at start-up). It reads the expiry index in bounded batches, decides each lot
with the chart's compiled form (no chart object per option), and commits each batch with
one script call in which every lot is guarded by its revision: a lot that an API write
changed meanwhile is simply re-read and re-decided. Each batch is atomic, so a crash
between batches loses nothing (what is left is still in the index) and duplicates nothing
(what was done is no longer in it); running it twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from service.codec import decode_lot
from service.store import LotStore
from statecharts import transitions as tr
from statecharts.model import DomainEvent


@dataclass(slots=True)
class SweepReport:
    tick: int
    lots: int = 0
    expired: int = 0
    promoted: int = 0
    batches: int = 0
    retried: int = 0
    dangling: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)


async def expire_due(store: LotStore, tick: int, batch: int = 500) -> SweepReport:
    """Expire every option with effective expiry <= `tick` (one event per change)."""
    report = SweepReport(tick)
    keys = store.keys
    redis = store.redis
    while True:
        members = cast(
            list[bytes], await redis.zrangebyscore(keys.expiries, "-inf", tick, start=0, num=batch)
        )
        if not members:
            return report
        codes = list(dict.fromkeys(m.split(b"/", 1)[0].decode() for m in members))
        await _sweep_lots(store, codes, tick, report, members)
        report.batches += 1


async def _sweep_lots(
    store: LotStore, codes: list[str], tick: int, report: SweepReport, members: list[bytes]
) -> None:
    pending = codes
    for _attempt in range(store.max_attempts):
        raws = cast(
            list[bytes | None], await store.redis.mget([store.keys.lot(c) for c in pending])
        )
        transitions = []
        decided: list[tuple[str, list[DomainEvent]]] = []
        for code, raw in zip(pending, raws, strict=True):
            if raw is None:
                # An index entry without its lot can only come from outside tampering;
                # drop the entries so the sweep does not spin on them.
                dangling = [m for m in members if m.startswith(code.encode() + b"/")]
                await store.redis.zrem(store.keys.expiries, *dangling)
                report.dangling += len(dangling)
                continue
            old, lot = decode_lot(code, raw), decode_lot(code, raw)
            events = tr.expire_due(lot, tick, store.rules)
            if not events:
                continue  # an API write already made these expiries durable
            transitions.append(store.commit_args(old, lot, events, tick))
            decided.append((code, events))
        if not transitions:
            return
        applied = await store.commit(transitions, mode="each")
        retry = []
        for (code, events), ok in zip(decided, applied, strict=True):
            if ok:
                report.lots += 1
                for e in events:
                    report.events_by_type[e.type] = report.events_by_type.get(e.type, 0) + 1
                    if e.type == "option.expired":
                        report.expired += 1
                    elif e.type == "option.promoted":
                        report.promoted += 1
            else:
                retry.append(code)
        if not retry:
            return
        report.retried += len(retry)
        pending = retry
