"""The sweep: make every expiry due at or before a tick durable, with its events.

``expire_due(store, tick)`` is what the scheduler calls at each :00 / :30 (and for every
missed tick at start-up). It fetches the lots holding due options (one script call per
window), decides each lot with the chart's compiled form (no chart object per option), and
commits chunks of at most `batch` lots with one script call each, in which every lot is
guarded by its revision: a lot that an API write changed meanwhile is skipped, stays in
the index, and is re-read and re-decided on the next pass. The commit of one chunk runs in
Redis while the next chunk is decided here, so both cores work.

Each chunk is atomic, so a crash between chunks loses nothing (what is left is still in the
index) and duplicates nothing (what was done is no longer in it); running the sweep twice
changes nothing the second time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from service.codec import decode_lot
from service.store import LotStore, view
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
    repaired: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)

    def count(self, events: list[DomainEvent]) -> None:
        self.lots += 1
        for e in events:
            self.events_by_type[e.type] = self.events_by_type.get(e.type, 0) + 1
            if e.type == "option.expired":
                self.expired += 1
            elif e.type == "option.promoted":
                self.promoted += 1


async def expire_due(
    store: LotStore, tick: int, batch: int = 500, window: int | None = None
) -> SweepReport:
    """Expire every option with effective expiry <= `tick` (one event per change)."""
    report = SweepReport(tick)
    window = window or batch * 10
    while True:
        fetched = await store.fetch_due(tick, window)
        if not fetched:
            return report
        progressed = await _sweep_window(store, fetched, tick, batch, report)
        if not progressed:
            # Every fetched lot lost its race to a writer: let the writers finish.
            await asyncio.sleep(0.001)


async def _sweep_window(
    store: LotStore,
    fetched: list[tuple[str, bytes | None]],
    tick: int,
    batch: int,
    report: SweepReport,
) -> bool:
    progressed = False
    inflight: asyncio.Task[Any] | None = None
    decided: list[list[DomainEvent]] = []
    for start in range(0, len(fetched), batch):
        transitions: list[list[Any]] = []
        events_of: list[list[DomainEvent]] = []
        for code, raw in fetched[start : start + batch]:
            if raw is None:
                await _repair(store, code, None)
                report.repaired += 1
                progressed = True
                continue
            lot = decode_lot(code, raw)
            before = view(lot)
            events = tr.expire_due(lot, tick, store.rules)
            if not events:
                # Index entries <= tick for options not due: only outside tampering does
                # that; rewrite the lot's entries so the sweep cannot spin on them.
                await _repair(store, code, lot)
                report.repaired += 1
                progressed = True
                continue
            transitions.append(store.transition(before, lot, events, tick))
            events_of.append(events)
        if inflight is not None:
            progressed |= _account(await inflight, decided, report)
            inflight = None
        if transitions:
            inflight = asyncio.ensure_future(store.commit(transitions, mode="each"))
            decided = events_of
            report.batches += 1
            # Let the commit reach the socket before deciding the next chunk: Redis runs
            # the script while this process works on the next lots.
            for _ in range(3):
                await asyncio.sleep(0)
    if inflight is not None:
        progressed |= _account(await inflight, decided, report)
    return progressed


def _account(applied: list[int], decided: list[list[DomainEvent]], report: SweepReport) -> bool:
    progressed = False
    for ok, events in zip(applied, decided, strict=True):
        if ok:
            report.count(events)
            progressed = True
        else:
            report.retried += 1
    return progressed


async def _repair(store: LotStore, code: str, lot: Any) -> None:
    """Make the expiry index say exactly what the lot holds (or drop a vanished lot's)."""
    keys = store.keys
    prefix = code.encode() + b"/"
    mine: list[bytes] = [
        m
        async for m, _ in store.redis.zscan_iter(keys.expiries, match=_glob_escape(code) + "/*")
        if m.startswith(prefix) and b"/" not in m[len(prefix) :]
    ]
    async with store.redis.pipeline(transaction=True) as pipe:
        if mine:
            pipe.zrem(keys.expiries, *mine)
        if lot is not None:
            for member, score in view(lot).expiries.items():
                pipe.zadd(keys.expiries, {member: score})
        await pipe.execute()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
