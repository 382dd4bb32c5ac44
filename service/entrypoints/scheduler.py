"""The scheduler daemon: ``koban-options scheduler``, or in-process under ``run``.

An APScheduler 3 `AsyncIOScheduler` in UTC runs a table of jobs (`job_table`), each a
plain coroutine called with a clock value: ticks (a cron at :00 and :30, or every few
seconds on a sandbox tenant's test clock), notices, stock sync, reconciliation, intents,
stream retention and a heartbeat. Every job runs with ``misfire_grace_time=None,
coalesce=True, max_instances=1``: the default grace of one second skips a tick after a
stall. Several daemons may share one Redis; leases and idempotent jobs make that safe.
Beside the table, the daemon runs the webhook deliverer (`service.usecases.delivery`).
`Daemon` starts (catch-up first) and stops (grace, one summary line) it. Nothing is
created at import time. The job table and its reasons: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal

import aiohttp
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from service.bootstrap import KobanFactory
from service.clock import Clock, SystemClock
from service.entrypoints.api.health import Metrics
from service.koban import KobanClient
from service.storage.heartbeat import beat, read_heartbeat
from service.storage.redis_client import RedisClient
from service.storage.retention import trim_events
from service.tenancy import Tenant, Tenants
from service.usecases.delivery import Deliverer
from service.usecases.intents import Resolution, resolve_pending
from service.usecases.notices import NoticeReport, send_notices
from service.usecases.sandbox_clock import is_sandbox, refresh, refresh_all
from service.usecases.sync import ReconcileReport, SyncReport, reconcile
from service.usecases.sync_runs import SyncInProgress, claim_sync
from service.usecases.ticking import LEASE_TTL_MS, TickReport, catch_up

__all__ = [
    "HEARTBEAT_TTL_S",
    "Daemon",
    "Intervals",
    "Job",
    "heartbeat_age",
    "job_table",
    "tick_trigger",
]

log = structlog.get_logger("service.entrypoints.scheduler")

HEARTBEAT_TTL_S = 30
JOB_DEFAULTS = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}


def tick_trigger() -> CronTrigger:
    """:00 and :30 of every hour, in UTC (ticks are :00 / :30 in every accepted zone)."""
    return CronTrigger(minute="0,30", timezone=UTC)


@dataclass(frozen=True, slots=True)
class Intervals:
    """Seconds between runs of the interval jobs."""

    sandbox_clock_s: float = 5
    notices_s: float = 60
    sync_s: float = 600
    reconcile_s: float = 120
    intents_s: float = 30
    retention_s: float = 900
    heartbeat_s: float = 5


# --------------------------------------------------------------------------- the jobs
# Plain coroutines: tests call them with a clock value.


async def tick_job(
    tenant: Tenant,
    now: int,
    *,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    batch: int = 500,
    lease_ttl_ms: int = LEASE_TTL_MS,
) -> list[TickReport]:
    """Every tick of the tenant up to `now` not processed yet (normally the one just
    reached), each through `process_tick`."""
    reports = await catch_up(tenant, now, stop=stop, batch=batch, lease_ttl_ms=lease_ttl_ms)
    if metrics is not None:
        for report in reports:
            if report.outcome == "processed":
                metrics.observe_sweep(tenant.name, report.duration_s)
    return reports


async def notices_job(tenant: Tenant, now: int) -> NoticeReport:
    return await send_notices(tenant.store, now)


async def sync_job(tenant: Tenant, koban: KobanClient, now: int) -> SyncReport | None:
    """An incremental stock sync, unless one of the tenant's is running anywhere."""
    try:
        claim = await claim_sync(tenant)
    except SyncInProgress:
        return None
    return await claim.run(koban, now)


async def reconcile_job(tenant: Tenant, koban: KobanClient, now: int) -> ReconcileReport:
    return await reconcile(tenant, koban, now)


async def intents_job(tenant: Tenant, koban: KobanClient, now: int) -> list[Resolution]:
    return await resolve_pending(tenant, koban, now)


async def retention_job(tenant: Tenant, now: int) -> int:
    """Trim the tenant's stream by age; `now` is real time (stream ids are Redis' clock)."""
    return await trim_events(tenant.store, tenant.name, now, tenant.settings.event_retention)


async def heartbeat_job(redis: RedisClient, now: float) -> None:
    await beat(redis, now, HEARTBEAT_TTL_S)


async def heartbeat_age(redis: RedisClient, now: float | None = None) -> float | None:
    """Seconds since the last heartbeat of any daemon; None when there is none."""
    raw = await read_heartbeat(redis)
    if raw is None:
        return None
    try:
        beat = float(raw)
    except ValueError:
        return None
    return (time.time() if now is None else now) - beat


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the job table: `run` is called with the clock value of `clock`."""

    id: str
    trigger: BaseTrigger
    run: Callable[[int], Awaitable[object]]
    tenant: Tenant | None = None
    clock: Literal["tenant", "real"] = "tenant"


def job_table(
    tenants: Tenants,
    redis: RedisClient,
    koban: Mapping[str, KobanClient],
    *,
    intervals: Intervals,
    metrics: Metrics | None = None,
    stop: asyncio.Event | None = None,
    batch: int = 500,
    lease_ttl_ms: int = LEASE_TTL_MS,
) -> list[Job]:
    """Every job of the daemon, heartbeat first."""

    def every(seconds: float) -> IntervalTrigger:
        return IntervalTrigger(seconds=seconds, timezone=UTC)

    async def beat(now: int) -> None:
        await heartbeat_job(redis, time.time())

    jobs = [Job("heartbeat", every(intervals.heartbeat_s), beat, clock="real")]
    for name, tenant in tenants.items():

        async def tick(now: int, tenant: Tenant = tenant) -> list[TickReport]:
            return await tick_job(
                tenant, now, metrics=metrics, stop=stop, batch=batch, lease_ttl_ms=lease_ttl_ms
            )

        if is_sandbox(tenant):
            jobs.append(Job(f"clock:{name}", every(intervals.sandbox_clock_s), tick, tenant))
        else:
            jobs.append(Job(f"tick:{name}", tick_trigger(), tick, tenant))

        async def notices(now: int, tenant: Tenant = tenant) -> NoticeReport:
            return await notices_job(tenant, now)

        async def retention(now: int, tenant: Tenant = tenant) -> int:
            return await retention_job(tenant, now)

        jobs.append(Job(f"notices:{name}", every(intervals.notices_s), notices, tenant))
        jobs.append(
            Job(f"retention:{name}", every(intervals.retention_s), retention, tenant, "real")
        )
        client = koban.get(name)
        if client is None:
            continue

        async def sync(now: int, t: Tenant = tenant, k: KobanClient = client) -> object:
            return await sync_job(t, k, now)

        async def reconciliation(now: int, t: Tenant = tenant, k: KobanClient = client) -> object:
            return await reconcile_job(t, k, now)

        async def intents(now: int, t: Tenant = tenant, k: KobanClient = client) -> object:
            return await intents_job(t, k, now)

        jobs.append(Job(f"sync:{name}", every(intervals.sync_s), sync, tenant))
        jobs.append(Job(f"reconcile:{name}", every(intervals.reconcile_s), reconciliation, tenant))
        jobs.append(Job(f"intents:{name}", every(intervals.intents_s), intents, tenant))
    return jobs


# --------------------------------------------------------------------------- the daemon


@dataclass(slots=True)
class Summary:
    """What the daemon did, logged once when it stops."""

    started_at: float = field(default_factory=time.time)
    ticks: int = 0
    expired: int = 0
    promoted: int = 0
    notices: int = 0
    jobs_run: int = 0
    jobs_failed: int = 0
    handed_back: int = 0  # jobs cancelled at shutdown (a tick's lease goes back at once)


class Daemon:
    """The scheduler of `tenants`, startable and stoppable in-process on the running loop."""

    def __init__(
        self,
        tenants: Tenants,
        redis: RedisClient,
        *,
        koban_factory: KobanFactory | None = None,
        metrics: Metrics | None = None,
        intervals: Intervals | None = None,
        real_clock: Clock | None = None,
        batch: int = 500,
        lease_ttl_ms: int = LEASE_TTL_MS,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        self.tenants = tenants
        self.redis = redis
        self.koban_factory = koban_factory
        self.metrics = metrics
        self.intervals = intervals or Intervals()
        self.real_clock = real_clock or SystemClock()
        self.batch = batch
        self.lease_ttl_ms = lease_ttl_ms
        self.shutdown_grace_s = shutdown_grace_s
        self.summary = Summary()
        self.stopping = asyncio.Event()
        self.koban: dict[str, KobanClient] = {}
        self.jobs: list[Job] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._session: aiohttp.ClientSession | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self.deliverer: Deliverer | None = None

    # ----------------------------------------------------------------- running jobs

    def _now(self, job: Job) -> int:
        if job.clock == "real" or job.tenant is None:
            return self.real_clock.now()
        return job.tenant.clock.now()

    async def run_job(self, job: Job) -> object:
        """Run one job now (what the scheduler calls); failures are logged, not raised."""
        if self.stopping.is_set():
            return None
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            if job.tenant is not None and is_sandbox(job.tenant):
                await refresh(job.tenant)  # another process may have moved its clock
            result = await job.run(self._now(job))
        except asyncio.CancelledError:
            self.summary.handed_back += 1
            log.warning("job_handed_back", job=job.id)
            raise
        except Exception as exc:
            self.summary.jobs_failed += 1
            log.error("job_failed", job=job.id, error=f"{type(exc).__name__}: {exc}")
            return None
        finally:
            if task is not None:
                self._running.discard(task)
        self.summary.jobs_run += 1
        self._count(result)
        return result

    def _count(self, result: object) -> None:
        if isinstance(result, list):
            for report in result:
                if isinstance(report, TickReport) and report.outcome == "processed":
                    self.summary.ticks += 1
                    self.summary.expired += report.expired
                    self.summary.promoted += report.promoted
                    self.summary.notices += report.notices
        elif isinstance(result, NoticeReport):
            self.summary.notices += result.notices

    # ----------------------------------------------------------------- life cycle

    async def _koban_clients(self) -> None:
        factory = self.koban_factory
        if factory is None:
            from service.bootstrap import koban_from_settings

            factory = koban_from_settings
        self._session = aiohttp.ClientSession()
        for name, tenant in self.tenants.items():
            client = factory(tenant, self._session)
            if client is not None:
                self.koban[name] = client

    async def start(self) -> None:
        """Heartbeat, catch-up of every tenant, then the scheduled jobs."""
        await refresh_all(self.tenants.values())
        await self._koban_clients()
        self.jobs = job_table(
            self.tenants,
            self.redis,
            self.koban,
            intervals=self.intervals,
            metrics=self.metrics,
            stop=self.stopping,
            batch=self.batch,
            lease_ttl_ms=self.lease_ttl_ms,
        )
        scheduler = AsyncIOScheduler(timezone=UTC, job_defaults=JOB_DEFAULTS)
        self._scheduler = scheduler
        heartbeat, rest = self.jobs[0], self.jobs[1:]
        self._add(heartbeat)
        scheduler.start()  # the heartbeat beats during a long catch-up
        await self.run_job(heartbeat)
        log.info(
            "scheduler_starting",
            tenants=sorted(self.tenants),
            koban=sorted(self.koban),
            jobs=[j.id for j in self.jobs],
        )
        catch_ups = [j for j in rest if j.id.startswith(("tick:", "clock:"))]
        await asyncio.gather(*(self.run_job(j) for j in catch_ups))
        if self.stopping.is_set():
            return
        for job in rest:
            self._add(job)
        registry = self.metrics.registry if self.metrics is not None else None
        self.deliverer = Deliverer(self.tenants, registry=registry)
        await self.deliverer.start()
        log.info("scheduler_started", jobs=len(self.jobs))

    def _add(self, job: Job) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(self.run_job, job.trigger, args=[job], id=job.id, name=job.id)

    async def stop(self, reason: str = "stop") -> Summary:
        """Stop taking work, let running jobs finish (or hand their ticks back), log the
        summary line."""
        self.stopping.set()
        scheduler = self._scheduler
        if scheduler is not None and scheduler.running:
            scheduler.pause()  # no new runs; the running ones go on
        if self.deliverer is not None:
            await self.deliverer.stop()  # undelivered heads stay queued for the next one
            self.deliverer = None
        running = [t for t in self._running if t is not asyncio.current_task()]
        if running:
            _, late = await asyncio.wait(running, timeout=self.shutdown_grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down from a loop callback
        if self._session is not None:
            await self._session.close()
            self._session = None
        s = self.summary
        log.info(
            "scheduler_stopped",
            reason=reason,
            uptime_s=round(time.time() - s.started_at, 1),
            ticks=s.ticks,
            expired=s.expired,
            promoted=s.promoted,
            notices=s.notices,
            jobs_run=s.jobs_run,
            jobs_failed=s.jobs_failed,
            handed_back=s.handed_back,
        )
        return s

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


async def run_daemon(tenants: Tenants, redis: RedisClient, **kwargs: Any) -> int:
    """``koban-options scheduler``: the daemon until SIGTERM/SIGINT; 0 when stopped so.

    A signal during the start-up catch-up ends it between ticks (or hands the tick back
    after the grace period)."""
    from service.entrypoints.serve import wait_for_stop

    daemon = Daemon(tenants, redis, **kwargs)
    stop = asyncio.ensure_future(wait_for_stop())
    starting = asyncio.ensure_future(daemon.start())
    reason = "start-up failed"
    try:
        done, _ = await asyncio.wait({stop, starting}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # start-up errors propagate (after the clean-up below)
            reason = await stop
        else:
            reason = stop.result()
    finally:
        stop.cancel()
        await daemon.stop(reason)
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
    return 0
