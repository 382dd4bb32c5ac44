"""The sweep: make every expiry due at or before a tick durable, with its events.

``sweep_expiries(store, tick)`` is what the scheduler calls at each :00 / :30 (and for
every missed tick at start-up). It reads the expiry index in windows and works in chunks of
at most `batch` options: one MGET reads a chunk's lots and histories; each lot is planned
(`expiry_plans`: the fast path on its stored JSON, else the generic path); one call of
``sweep.lua`` applies the chunk, all or nothing, after checking that no lot's revision
moved since the read. A lot an API write changed meanwhile is dropped from the chunk (the
others are resubmitted) and read again in the next window. Each script call is atomic, so
a crash loses and duplicates nothing, and running the sweep twice changes nothing. Redis is
reached through the sweep's own channel (service/storage/sweep_channel.py).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.storage.expiry_index import drop_entries, repair_lot_entries
from service.storage.store import LotStore
from service.storage.sweep_channel import APPLY, RANGE, READ, RELOADED, SweepChannel, sweep_channel
from service.storage.sweep_script import MAX_BATCH, Plan
from service.usecases.event_templates import EXPIRED, PROMOTED, templates
from service.usecases.expiry_plans import generic_expiry, plan_of
from service.usecases.fast_expiry import ExpiryDecisions, fast_plan
from statecharts.decide import COMPILED, DecisionEngine

READ_AHEAD = 2  # chunks read ahead of the one being decided


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
    # Where the sweep's wall time went, measured per chunk (a few clock reads per chunk):
    # waiting for Redis on the index and lot reads, on the script calls, to take what we
    # send; deciding (events rendered included) and packing the script calls.
    reads_s: float = 0.0
    script_s: float = 0.0
    send_s: float = 0.0
    decide_s: float = 0.0
    pack_s: float = 0.0

    def count(self, types: Iterable[str]) -> None:
        self.lots += 1
        for t in types:
            self.events_by_type[t] = self.events_by_type.get(t, 0) + 1
            if t == EXPIRED:
                self.expired += 1
            elif t == PROMOTED:
                self.promoted += 1


async def sweep_expiries(
    store: LotStore,
    tick: int,
    batch: int = 500,
    window: int | None = None,
    *,
    engine: DecisionEngine = COMPILED,
) -> SweepReport:
    """Expire every option of the tenant with effective expiry <= `tick` (one event per
    change); one lot's rule is `transitions.expire_due`.

    `batch` bounds the options (expiry index entries) of one atomic script call (at most
    `MAX_BATCH`); `window` the index entries read at once (default 40 chunks); `engine`
    answers the chart's questions.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    batch = min(batch, MAX_BATCH)
    return await _Sweeper(store, tick, batch, window or batch * 40, engine).run()


def chunks(members: list[bytes], batch: int) -> tuple[list[list[str]], list[bytes]]:
    """The lots of an index window, in order, at most `batch` index entries a chunk; and
    the entries that name no lot (no "/": only outside tampering writes those)."""
    per_lot: dict[bytes, int] = {}
    malformed: list[bytes] = []
    for m in members:
        slash = m.rfind(b"/")
        if slash < 0:
            malformed.append(m)
            continue
        code = m[:slash]
        per_lot[code] = per_lot.get(code, 0) + 1
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for code, n in per_lot.items():
        if current and size + n > batch:
            out.append(current)
            current, size = [], 0
        current.append(code.decode())
        size += n
    if current:
        out.append(current)
    return out, malformed


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a chunk is decided and packed.

    A chunk allocates a dozen containers per lot, most alive until it is sent: the collector
    would walk them again and again to find nothing, a sizeable share of the sweep's
    Python time. Used only around code that does not await, so no other task runs
    meanwhile; the collector runs as usual right after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Sweeper:
    """One sweep over its own channel to Redis (service/storage/sweep_channel.py)."""

    def __init__(
        self, store: LotStore, tick: int, batch: int, window: int, engine: DecisionEngine
    ) -> None:
        self.store = store
        self.engine = engine
        self.decisions = ExpiryDecisions(engine)
        self.tick = tick
        self.batch = batch
        self.window = window
        self.report = SweepReport(tick)
        self.channel: SweepChannel | None = None

    async def send_apply(self, plans: list[Plan], command: bytes | None = None) -> None:
        """Queue the script call applying `plans` (`command`: it, packed already)."""
        assert self.channel is not None
        if command is None:
            command = self.channel.apply_command(self.tick, plans)
        await self.channel.send_apply(plans, command)

    async def read_one(self) -> tuple[str, Any, Any] | None:
        """The next reply; an apply's reply is settled here and gives None."""
        assert self.channel is not None
        kind, what, reply = await self.channel.read()
        if kind == RELOADED:  # the script cache was flushed: it is loaded again
            await self.send_apply(what)
            return None
        if kind != APPLY:
            return kind, what, reply
        await self.settle(what, reply)
        return None

    async def next_reply(self, kind: str) -> Any:
        while (got := await self.read_one()) is None:
            pass
        assert got[0] == kind
        return got[2]

    async def settle(self, plans: list[Plan], moved: list[int]) -> None:
        if not moved:
            for p in plans:
                self.report.count(p.event_types)
            return
        # A writer changed these lots after we read them: nothing was written; the others
        # go again at once, these are read again in the next window.
        self.report.retried += len(moved)
        skip = set(moved)
        keep = [p for i, p in enumerate(plans, 1) if i not in skip]
        if keep:
            await self.send_apply(keep)

    async def run(self) -> SweepReport:
        store, report = self.store, self.report
        async with sweep_channel(store) as channel:
            self.channel = channel
            try:
                await self.sweep(channel)
            finally:
                report.send_s += channel.send_s
                report.reads_s += channel.reads_s
                report.script_s += channel.script_s
        return report

    async def sweep(self, channel: SweepChannel) -> None:
        await channel.send_range(self.tick, self.window)
        while True:
            members = await self.next_reply(RANGE)
            lots, malformed = chunks(members, self.batch)
            if malformed:
                await drop_entries(self.store, malformed)
                self.report.repaired += len(malformed)
            if lots:
                await self.window_of(lots)
                continue
            if not channel.in_flight and not malformed:
                break
            while channel.in_flight:  # resubmitted chunks still in flight: then look again
                await self.read_one()
            await channel.send_range(self.tick, self.window)

    async def window_of(self, lots: list[list[str]]) -> None:
        """Decide and apply one window's chunks; the next window's range goes out last.

        Reads go out two chunks ahead, so Redis has the next apply queued while Python
        decides: chunk i is decided while Redis applies chunks i-1 and i-2.
        """
        channel = self.channel
        assert channel is not None
        ahead = READ_AHEAD
        for codes in lots[:ahead]:
            await channel.send_read(codes)
        for i, codes in enumerate(lots):
            if i + ahead < len(lots):
                await channel.send_read(lots[i + ahead])
            values = await self.next_reply(READ)
            n = len(codes)
            with _collector_paused():  # no awaits inside: no other task runs meanwhile
                started = time.perf_counter()
                plans, broken = self.decide(codes, values[:n], values[n:])
                decided = time.perf_counter()
                command = channel.apply_command(self.tick, plans) if plans else b""
                self.report.decide_s += decided - started
                self.report.pack_s += time.perf_counter() - decided
            if plans:
                await self.send_apply(plans, command)
                self.report.batches += 1
            if i + 1 == len(lots):
                await channel.send_range(self.tick, self.window)  # after every apply sent
            for code in broken:
                if await repair_lot_entries(self.store, code):
                    self.report.repaired += 1

    def decide(
        self, codes: list[str], raws: list[bytes | None], histories: list[bytes | None]
    ) -> tuple[list[Plan], list[str]]:
        """Plans for the chunk's lots (each with its whole new history), and the lots to
        repair."""
        store, tick, report = self.store, self.tick, self.report
        t = templates(store.tenant, store.public_base_url)
        own = store.rules.rank2_clock == "own"
        cap = store.history_cap
        decisions = self.decisions
        plans: list[Plan] = []
        broken: list[str] = []
        for code, raw, history in zip(codes, raws, histories, strict=True):
            if raw is None:
                broken.append(code)
                continue
            plan: Plan | None = None
            if t is not None:
                plan = fast_plan(t, own, decisions, code, raw, tick, history, cap)
            if plan is not None:
                report.fast += 1
            else:
                result = generic_expiry(store, code, raw, tick, self.engine)
                if result is None:  # index entries <= tick, nothing due: outside tampering
                    broken.append(code)
                    continue
                plan = plan_of(result[0], result[1], raw, tick, history, cap)
            plans.append(plan)
        return plans, broken
