"""The one code path for a tick of a tenant: the daemon's cron job, its start-up catch-up
and the sandbox test clocks all go through `process_tick` (docs/semantics.md).

``process_tick(tenant, tick)``:

1. returns at once when the tick is already processed (the tenant's "last processed tick",
   `TenantKeys.ticked`, is at or after it: processing a tick expires everything due at or
   before it, so a later tick covers the earlier ones);
2. takes the tick's lease (`TenantKeys.tick_lease`: ``SET NX PX`` with an owner token,
   `LEASE_TTL_MS` of real time, renewed every third of it while the tick runs, so a slow
   sweep keeps it and a dead daemon's lapses). When another daemon holds it, waits
   (polling) until that one marks the tick done — then there is nothing left to do — or
   its lease lapses or is handed back, and takes over: the sweep is idempotent and atomic
   per chunk, so a half-done tick is simply finished;
3. sends the expiring notices due by the tick of options expiring at or before it
   (`service.usecases.notices`; normally none, earlier ticks gave them), so that in a catch-up or a
   test-clock jump an option's notice precedes its expiry;
4. runs `service.usecases.sweep.sweep_expiries(store, tick)` (each event's ``time`` is its
   own tick);
5. sends the other notices due by the tick (the window ahead: options expiring within
   `expiring_notice` after it), after the expiries, which are what the tick is late for;
6. records the tick as processed (a script keeps the maximum: the record only moves
   forward) and releases the lease. Cancelled (shutdown), it releases the lease without
   recording anything: another daemon finishes the tick at once.

``catch_up(tenant, now)`` processes, in order, every tick after the last processed one up
to the latest tick ≤ `now`; with no record (fresh install) only the latest tick ≤ now
(which expires everything due before it too). ``advance_clock`` moves a sandbox tenant's
test clock and catches up before returning (``POST …/clock``).

Each tick is logged (structlog ``tick``): tenant, tick, outcome, due, expired, promoted,
notices, duration, lateness (processing start on the tenant's clock − tick).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from service.storage.lease import LeaseLost
from service.storage.leases import tick_lease
from service.storage.tenant_state import count_due, last_tick, raise_last_tick
from service.tenancy import Tenant
from service.usecases.notices import send_notices
from service.usecases.sandbox_clock import ClockBackwards, advance_offset, refresh
from service.usecases.sweep import SweepReport, sweep_expiries
from statecharts.ticks import TICK_SECONDS, latest_tick, ticks_between, to_iso

__all__ = [
    "LEASE_TTL_MS",
    "ClockAdvance",
    "ClockHook",
    "TickReport",
    "advance_clock",
    "catch_up",
    "last_processed",
    "process_tick",
]

log = structlog.get_logger("service.usecases.ticking")

LEASE_TTL_MS = 10_000
POLL_S = 0.2

Outcome = Literal["processed", "done_elsewhere", "already_done", "lease_lost"]
# Called with the tenant and its new instant after its test clock moved (and its ticks ran).
ClockHook = Callable[[Tenant, int], Awaitable[None] | None]


@dataclass(slots=True)
class TickReport:
    tenant: str
    tick: int
    outcome: Outcome
    took_over: bool = False  # processed after another daemon's lease lapsed or was handed back
    due: int = 0  # expiry index entries due at or before the tick when processing started
    expired: int = 0
    promoted: int = 0
    notices: int = 0
    lots: int = 0
    retried: int = 0
    lateness_s: int = 0  # processing start (the tenant's clock) - tick
    duration_s: float = 0.0  # processing start -> recorded
    entered_at: float = 0.0  # wall clock (time.time()) when process_tick was called
    started_at: float = 0.0  # wall clock at processing start (the lease held)
    sweep_started_at: float = 0.0  # wall clock when the sweep began
    swept_at: float = 0.0  # wall clock when the sweep's last chunk (the tick's last expiry) landed
    sweep: SweepReport | None = field(default=None, repr=False)


async def last_processed(tenant: Tenant) -> int | None:
    """The latest tick processed for the tenant (None before the first)."""
    return await last_tick(tenant.store)


async def _done(tenant: Tenant, tick: int) -> bool:
    last = await last_processed(tenant)
    return last is not None and last >= tick


def _log(report: TickReport) -> None:
    log.info(
        "tick",
        tenant=report.tenant,
        tick=to_iso(report.tick),
        outcome=report.outcome,
        took_over=report.took_over,
        due=report.due,
        expired=report.expired,
        promoted=report.promoted,
        notices=report.notices,
        lots=report.lots,
        duration_ms=round(report.duration_s * 1000, 1),
        lateness_s=report.lateness_s,
    )


async def process_tick(
    tenant: Tenant,
    tick: int,
    *,
    batch: int = 500,
    lease_ttl_ms: int = LEASE_TTL_MS,
    poll_s: float = POLL_S,
) -> TickReport:
    """Process one tick of one tenant, exactly once across daemons (see the module doc)."""
    if tick % TICK_SECONDS:
        raise ValueError(f"{tick} is not a tick")
    entered = time.time()
    store = tenant.store
    if await _done(tenant, tick):
        return TickReport(tenant.name, tick, "already_done")
    lease = tick_lease(store, tick, lease_ttl_ms)
    waited = False
    while not await lease.acquire():
        waited = True
        await asyncio.sleep(poll_s)
        if await _done(tenant, tick):
            report = TickReport(tenant.name, tick, "done_elsewhere")
            _log(report)
            return report
    try:
        async with lease.kept():
            if await _done(tenant, tick):  # the holder finished between our two looks
                report = TickReport(tenant.name, tick, "done_elsewhere")
                _log(report)
                return report
            started = time.perf_counter()
            report = TickReport(
                tenant.name,
                tick,
                "processed",
                took_over=waited,
                entered_at=entered,
                started_at=time.time(),
                lateness_s=tenant.clock.now() - tick,
            )
            report.due = await count_due(store, tick)
            # Notices of options expiring by this tick first (normally none: they were given
            # at earlier ticks), the expiries, then the notices of the window ahead.
            first = await send_notices(store, tick, through=tick)
            report.sweep_started_at = time.time()
            sweep = await sweep_expiries(store, tick, batch=batch)
            report.swept_at = time.time()
            ahead = await send_notices(store, tick)
            await raise_last_tick(store, tick)
            report.duration_s = time.perf_counter() - started
    except LeaseLost:
        # Another daemon may hold the tick now: it finishes it (the sweep is idempotent).
        report = TickReport(tenant.name, tick, "lease_lost", took_over=waited)
        _log(report)
        return report
    report.sweep = sweep
    report.expired = sweep.expired
    report.promoted = sweep.promoted
    report.lots = sweep.lots
    report.retried = sweep.retried
    report.notices = first.notices + ahead.notices
    _log(report)
    return report


async def catch_up(
    tenant: Tenant,
    now: int,
    *,
    since: int | None = None,
    stop: asyncio.Event | None = None,
    batch: int = 500,
    lease_ttl_ms: int = LEASE_TTL_MS,
    poll_s: float = POLL_S,
) -> list[TickReport]:
    """Every tick after the last processed one up to the latest tick ≤ `now`, in order.

    With no record yet: the ticks after `since` when given (a test clock's previous
    instant), else the latest tick ≤ `now` alone. `stop` set ends the run between ticks.
    """
    last = await last_processed(tenant)
    if last is not None:
        ticks = ticks_between(last, now)
    elif since is not None:
        ticks = ticks_between(since, now)
    else:
        ticks = [latest_tick(now)]
    reports = []
    for tick in ticks:
        if stop is not None and stop.is_set():
            break
        report = await process_tick(
            tenant, tick, batch=batch, lease_ttl_ms=lease_ttl_ms, poll_s=poll_s
        )
        reports.append(report)
        if report.outcome == "lease_lost":
            break  # later ticks wait for the next firing, after the holder's
    return reports


@dataclass(slots=True)
class ClockAdvance:
    before: int  # the tenant's now before the move
    now: int  # after it (a concurrent move further ahead may make it later than asked)
    ticks: list[TickReport]


async def advance_clock(
    tenant: Tenant, target: int, *, on_advanced: ClockHook | None = None, batch: int = 500
) -> ClockAdvance:
    """Move a sandbox tenant's test clock to `target` and process every tick passed, in
    order, before returning; then call `on_advanced(tenant, now)` (the Koban sandbox
    following the same clock under ``run``). `ClockBackwards` when `target` is past.

    The clock steps through the ticks it passes: each tick is processed while the clock
    reads it, and only then does the clock move on. Whatever else runs on this clock
    meanwhile (the sandbox's own ticks and their webhooks, API writes, the daemon) never
    sees an instant past a tick whose notices and expiries are not done yet, so a write
    cannot expire an option lazily before its `expiring` notice was given."""
    before = await refresh(tenant)
    if target < before:
        raise ClockBackwards(before, target)
    last = await last_processed(tenant)  # ticks missed before the move come first
    reports = []
    for tick in ticks_between(before if last is None else min(last, before), target):
        await advance_offset(tenant, tick)  # a no-op for a tick already passed
        reports.append(await process_tick(tenant, tick, batch=batch))  # listed even if done
    now = await advance_offset(tenant, target)
    reports += await catch_up(tenant, now, since=before, batch=batch)  # a concurrent move on
    if on_advanced is not None:
        result = on_advanced(tenant, now)
        if inspect.isawaitable(result):
            await result
    return ClockAdvance(before, now, reports)
