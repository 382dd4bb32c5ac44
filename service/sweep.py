"""The sweep: make every expiry due at or before a tick durable, with its events.

``expire_due(store, tick)`` is what the scheduler calls at each :00 / :30 (and for every
missed tick at start-up). It works in chunks of at most `batch` lots:

1. WATCH the chunk's lot keys and read them (and their histories) fresh;
2. decide each lot with the chart's compiled form — a lot of a common shape (one or two
   options, no pending intent, every due option on one tick) directly on its stored JSON
   (`fast_expiry`, proved equal to the generic path by tests/test_sweep_fast.py), any
   other lot through `transitions.expire_due` — no chart object per option;
3. MULTI / EXEC the chunk: lot values, indexes, counts, events and histories in one
   transaction of native multi-key commands (no Lua: at 100 000 expiries a tick, Lua's
   per-call overhead, not the work, was the cost).

If any lot of the chunk changed after WATCH (an API write), EXEC does nothing and the chunk
is read and decided again. The EXEC of one chunk runs in Redis while the next chunk is
decided here, so both cores work. Each chunk is atomic, so a crash between chunks loses
nothing (what is left is still in the index) and duplicates nothing (what was done is no
longer in it); running the sweep twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from service.codec import decode_lot
from service.keys import API_USER_FIELD, prospect_field
from service.store import LotStore, view
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Rules

# Inside the MULTI, per-item commands go through one small script each: redis-py reads a
# QUEUED reply per queued command (~50 µs each), and a chunk holds hundreds of events.
_XADD_MANY = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'ce', ARGV[i]) end
return #ARGV
"""
# Counts that reach zero are deleted in the same transaction, atomically.
_DECREMENT = """
for i = 1, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""


@dataclass(slots=True)
class SweepReport:
    tick: int
    lots: int = 0
    expired: int = 0
    promoted: int = 0
    batches: int = 0
    retried: int = 0
    repaired: int = 0
    fast: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)

    def count(self, events: list[DomainEvent]) -> None:
        self.lots += 1
        for e in events:
            self.events_by_type[e.type] = self.events_by_type.get(e.type, 0) + 1
            if e.type == "option.expired":
                self.expired += 1
            elif e.type == "option.promoted":
                self.promoted += 1


# --- deciding one lot -------------------------------------------------------------------


def _option_data(o: list[Any], actor: str) -> dict[str, object]:
    """`transitions.option_data` for a stored option array (same keys, same values)."""
    return {
        "optionId": o[0],
        "rank": o[1],
        "thirdGuid": o[2],
        "partnerGuid": o[3],
        "placedAt": o[4],
        "deadline": o[5],
        "effectiveExpiry": o[6],
        "deadlineSource": "koban" if o[8] else "estimated",
        "prolonged": bool(o[7]),
        "actor": actor,
    }


_FAST_CONFIGS = frozenset({"one_option", "two_options", "prereserved"})


def fast_expiry(
    store: LotStore, code: str, raw: bytes, tick: int
) -> tuple[list[Any], list[DomainEvent]] | None:
    """The sweep's transition for a lot of a common shape, straight from its stored JSON.

    Returns None when the lot is not of such a shape (pending intents, a custom status,
    due options on several ticks, a promotion restarting the clock...): the generic path
    decides those. The chart decides here as everywhere (`decide`). This is the hot loop of
    a tick (100 000 lots): written for speed, proved equal to the generic path by tests.
    """
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    config = d["c"]
    if "i" in d or "s" in d or config not in _FAST_CONFIGS:
        return None
    options = d.get("o")
    if not options or len(options) > 2:
        return None
    first = options[0]
    second = options[1] if len(options) == 2 else None
    if second is not None and second[1] < first[1]:
        first, second = second, first
    e1 = first[6]
    due1 = e1 is not None and e1 <= tick
    e2 = second[6] if second is not None else None
    due2 = e2 is not None and e2 <= tick
    if due1 and due2:
        if e1 != e2:
            return None  # several ticks to replay: the generic path does it in order
        due, rest, at = [first, second], None, e1
    elif due1:
        due, rest, at = [first], second, e1
    elif due2:
        due, rest, at = [second], first, e2
    else:
        return None
    target = tr.decide(config, "expire", {"rank1_due": due1, "rank2_due": due2})
    events = [DomainEvent("option.expired", at, _option_data(o, "sweep")) for o in due]
    if rest is not None and rest[1] == 2:
        if store.rules.rank2_clock != "own":
            return None
        tr.decide(target, "promote")
        rest[1] = 1
        events.append(DomainEvent("option.promoted", at, _option_data(rest, "sweep")))
    rev, version, sequence = int(raw[:bar]), d["v"] + 1, d["q"]
    d["c"] = target
    if rest is not None:
        d["o"] = [rest]
    else:
        del d["o"]
    d["v"] = version
    d["q"] = sequence + len(events)
    d["m"] = tick
    counts: list[Any] = []
    tombs: list[Any] = []
    for o in due:
        if o[2] is not None:
            counts += (prospect_field(o[2]), -1, 0)
            tombs += (f"{code}|{o[2]}|{o[5]}|{o[0]}", tick)
    via_api = sum(1 for o in due if o[10])
    if via_api:
        counts += (API_USER_FIELD, -via_api, 0)
    stream = [store.event(code, e, sequence + i, version) for i, e in enumerate(events, 1)]
    history = [store.history_line(e, sequence + i, version) for i, e in enumerate(events, 1)]
    transition = [
        rev,
        b"%d|" % (rev + 1) + orjson.dumps(d),
        code,
        tick,
        [f"{code}/{o[0]}" for o in due],
        [],
        counts,
        tombs,
        [],
        [],
        stream,
        history,
    ]
    return transition, events


def generic_expiry(
    store: LotStore, code: str, raw: bytes, tick: int
) -> tuple[list[Any], list[DomainEvent]] | None:
    lot = decode_lot(code, raw)
    before = view(lot)
    events = tr.expire_due(lot, tick, store.rules)
    if not events:
        return None
    return store.transition(before, lot, events, tick), events


# --- applying a chunk -------------------------------------------------------------------


def trim_history(history: bytes, cap: int) -> bytes:
    if history.count(b"\n") < cap:
        return history
    return b"\n".join(history.split(b"\n")[-cap:])


def _queue(pipe: Any, store: LotStore, transitions: list[list[Any]], histories: list[Any]) -> None:
    """The MULTI body: what ``commit.lua`` does for applied transitions, as native commands."""
    k = store.keys
    lots: dict[str, bytes] = {}
    scored: dict[str, int] = {}
    exp_rem: list[str] = []
    exp_add: dict[str, int] = {}
    deltas: Counter[str] = Counter()
    tombs: dict[str, int] = {}
    hist: dict[str, bytes] = {}
    events: list[bytes] = []
    for t, old in zip(transitions, histories, strict=True):
        code = t[2]
        lots[k.lot(code)] = t[1]
        if t[3] != "":
            scored[code] = t[3]
        exp_rem.extend(t[4])
        exp_add.update(zip(t[5][1::2], t[5][0::2], strict=True))
        for i in range(0, len(t[6]), 3):
            deltas[t[6][i]] += t[6][i + 1]
        tombs.update(zip(t[7][0::2], t[7][1::2], strict=True))
        events.extend(t[10])
        if t[11]:
            add = b"\n".join(t[11])
            hist[k.history(code)] = trim_history(
                old + b"\n" + add if old else add, store.history_cap
            )
    pipe.mset(lots)
    if events:
        pipe.eval(_XADD_MANY, 1, k.events, *events)
    if scored:
        pipe.zadd(k.lots, scored)
    if exp_rem:
        pipe.zrem(k.expiries, *exp_rem)
    if exp_add:
        pipe.zadd(k.expiries, exp_add)
    changed = [x for f, n in deltas.items() if n for x in (f, n)]
    if changed:
        pipe.eval(_DECREMENT, 1, k.counts, *changed)
    if tombs:
        pipe.zadd(k.tombstones, tombs)
    if hist:
        pipe.mset(hist)


@dataclass(slots=True)
class _Chunk:
    """One chunk's lots and histories, read under WATCH (the pipe holds the WATCH)."""

    pipe: Any
    codes: list[str]
    raws: list[bytes | None]
    histories: list[bytes | None]


async def _read(store: LotStore, codes: list[str]) -> _Chunk:
    redis: Redis = store.redis
    pipe: Any = redis.pipeline(transaction=True)
    lot_keys = [store.keys.lot(c) for c in codes]
    await pipe.watch(*lot_keys)
    raws = cast(list[bytes | None], await pipe.mget(lot_keys))
    # A history changes only together with its lot, which is watched.
    histories = cast(list[bytes | None], await pipe.mget([store.keys.history(c) for c in codes]))
    return _Chunk(pipe, codes, raws, histories)


async def _decide(
    store: LotStore, chunk: _Chunk, tick: int, report: SweepReport
) -> tuple[list[list[Any]], list[bytes | None], list[list[DomainEvent]]]:
    transitions: list[list[Any]] = []
    histories: list[bytes | None] = []
    decided: list[list[DomainEvent]] = []
    for code, raw, history in zip(chunk.codes, chunk.raws, chunk.histories, strict=True):
        if raw is None:
            await _repair(store, code, None)
            report.repaired += 1
            continue
        result = fast_expiry(store, code, raw, tick)
        if result is not None:
            report.fast += 1
        else:
            result = generic_expiry(store, code, raw, tick)
        if result is None:
            # Index entries <= tick for options not due: only outside tampering does
            # that; rewrite the lot's entries so the sweep cannot spin on them.
            await _repair(store, code, decode_lot(code, raw))
            report.repaired += 1
            continue
        transitions.append(result[0])
        histories.append(history)
        decided.append(result[1])
    return transitions, histories, decided


async def _exec(pipe: Any) -> bool:
    try:
        await pipe.execute()
        return True
    except WatchError:
        return False
    finally:
        await pipe.reset()


async def expire_due(
    store: LotStore, tick: int, batch: int = 500, window: int | None = None
) -> SweepReport:
    """Expire every option with effective expiry <= `tick` (one event per change)."""
    report = SweepReport(tick)
    window = window or batch * 10
    while True:
        members = cast(
            list[bytes],
            await store.redis.zrangebyscore(store.keys.expiries, "-inf", tick, start=0, num=window),
        )
        if not members:
            return report
        codes = list(dict.fromkeys(m.rsplit(b"/", 1)[0].decode() for m in members))
        chunks = [codes[i : i + batch] for i in range(0, len(codes), batch)]
        inflight: tuple[Any, list[list[DomainEvent]]] | None = None
        upcoming: _Chunk | None = await _read(store, chunks[0])
        try:
            for i in range(len(chunks)):
                current, upcoming = upcoming, None
                assert current is not None
                # Decided here while Redis runs the previous chunk's EXEC.
                transitions, histories, decided = await _decide(store, current, tick, report)
                if i + 1 < len(chunks):  # read the next chunk before queueing this EXEC
                    upcoming = await _read(store, chunks[i + 1])
                previous, inflight = inflight, None
                if transitions:
                    current.pipe.multi()
                    _queue(current.pipe, store, transitions, histories)
                    inflight = asyncio.ensure_future(_exec(current.pipe)), decided
                    report.batches += 1
                    for _ in range(3):  # let the EXEC reach the socket
                        await asyncio.sleep(0)
                else:
                    await current.pipe.reset()
                if previous is not None:
                    await _settle(previous, report)
            if inflight is not None:
                done, inflight = inflight, None
                await _settle(done, report)
        finally:
            if inflight is not None:  # failing: the last EXEC lands whole or not at all
                await asyncio.gather(inflight[0], return_exceptions=True)
            if upcoming is not None:
                await upcoming.pipe.reset()


async def _settle(inflight: tuple[Any, list[list[DomainEvent]]], report: SweepReport) -> None:
    task, decided = inflight
    if await task:
        for events in decided:
            report.count(events)
    else:
        report.retried += len(decided)  # a writer touched the chunk: it is swept again


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


__all__ = ["Rules", "SweepReport", "expire_due", "fast_expiry", "generic_expiry"]
