"""One tick once (service.usecases.ticking): the trigger, expiry at the right tick, catch-up in
order, two daemons against one Redis, a lease whose holder died, the daemon's start-up
catch-up and graceful stop — all on pinned clocks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast
from zoneinfo import ZoneInfo

import orjson
import pytest
from redis.asyncio import Redis

from service.clock import FixedClock
from service.entrypoints.scheduler import Daemon, Intervals, tick_job
from service.storage.keys import SCHEDULER_HEARTBEAT_KEY
from service.storage.redis_client import connect
from service.tenancy import Tenant
from service.usecases.ticking import catch_up, last_processed, process_tick
from statecharts.ticks import to_iso
from tests.support.api_harness import captured_logs, make_tenant
from tests.support.instants import ts
from tests.support.loading import load_options

# Every test here on a Redis backend also runs on the local Redis Cluster.
pytestmark = pytest.mark.cluster


PARIS = ZoneInfo("Europe/Paris")


async def events_of(tenant: Tenant, kind: str | None = None) -> list[dict[str, Any]]:
    store = tenant.store
    entries = cast(list[Any], await store.redis.xrange(store.keys.events))
    out = [orjson.loads(fields[b"ce"]) for _, fields in entries]
    return [e for e in out if kind is None or e["type"] == kind]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(ts("2026-11-23T09:50:00Z"))


@pytest.fixture
def t(redis: Redis, tenant: str, clock: FixedClock) -> Tenant:
    return make_tenant(redis, tenant, clock)


@pytest.fixture(autouse=True)
async def no_heartbeat_left(redis: Redis) -> AsyncIterator[None]:
    yield
    await redis.delete(SCHEDULER_HEARTBEAT_KEY)  # /readyz tests expect none


# --------------------------------------------------------------------------- the trigger


# --------------------------------------------------------------------------- one tenant


async def test_an_option_due_at_10_07_expires_at_the_10_30_tick_and_not_before(
    t: Tenant, clock: FixedClock
) -> None:
    placed = ts("2026-11-21T10:07:00Z")  # P2D: deadline 2026-11-23 10:07, expiry 10:30
    await t.store.import_lot("L1", placed - 60)
    option = await t.store.place_local("L1", "p1", None, placed)
    assert option.deadline == ts("2026-11-23T10:07:00Z")
    assert option.expiry == ts("2026-11-23T10:30:00Z")

    for moment in ("2026-11-23T10:00:00Z", "2026-11-23T10:07:00Z", "2026-11-23T10:29:59Z"):
        clock.set(ts(moment))
        await tick_job(t, clock.now())
        assert await events_of(t, "koban.option.expired") == [], moment
        assert (await t.store.load("L1")).options  # type: ignore[union-attr]
    assert await last_processed(t) == ts("2026-11-23T10:00:00Z")

    clock.set(ts("2026-11-23T10:30:00Z"))
    [report] = await tick_job(t, clock.now())
    assert report.tick == ts("2026-11-23T10:30:00Z") and report.outcome == "processed"
    assert (report.due, report.expired, report.lateness_s) == (1, 1, 0)
    [expired] = await events_of(t, "koban.option.expired")
    assert expired["time"] == "2026-11-23T10:30:00Z"
    assert expired["data"]["optionId"] == option.id and expired["data"]["actor"] == "sweep"
    lot = await t.store.load("L1")
    assert lot is not None and lot.config == "free"
    assert await tick_job(t, clock.now()) == []  # the tick is done: nothing runs twice


async def test_a_tick_already_processed_is_not_processed_again(t: Tenant) -> None:
    tick = ts("2026-11-23T10:00:00Z")
    first = await process_tick(t, tick)
    assert first.outcome == "processed"
    again = await process_tick(t, tick)
    earlier = await process_tick(t, tick - 1800)  # covered by the later one
    assert again.outcome == earlier.outcome == "already_done"
    with pytest.raises(ValueError, match="not a tick"):
        await process_tick(t, tick + 60)


async def test_catch_up_runs_every_missed_tick_in_order_each_event_at_its_own_tick(
    t: Tenant, clock: FixedClock
) -> None:
    clock.set(ts("2026-11-23T11:47:00Z"))
    await t.store.redis.set(t.store.keys.ticked, ts("2026-11-23T10:00:00Z"))  # down at 10:15
    placed = ts("2026-11-21T09:00:00Z")
    for i, due in enumerate(("10:30", "11:00", "11:30", "12:00")):
        await load_options(t.store, [f"C{i}"], ts(f"2026-11-23T{due}:00Z"), placed)
    reports = await catch_up(t, clock.now())
    assert [to_iso(r.tick) for r in reports] == [
        "2026-11-23T10:30:00Z",
        "2026-11-23T11:00:00Z",
        "2026-11-23T11:30:00Z",
    ]
    assert [r.expired for r in reports] == [1, 1, 1]
    assert [r.lateness_s for r in reports] == [77 * 60, 47 * 60, 17 * 60]
    expired = await events_of(t, "koban.option.expired")
    assert [(e["subject"], e["time"]) for e in expired] == [
        ("C0", "2026-11-23T10:30:00Z"),
        ("C1", "2026-11-23T11:00:00Z"),
        ("C2", "2026-11-23T11:30:00Z"),
    ]
    assert await last_processed(t) == ts("2026-11-23T11:30:00Z")


async def test_a_fresh_install_starts_at_the_latest_tick_which_expires_everything_before(
    t: Tenant,
) -> None:
    placed = ts("2026-11-20T09:00:00Z")
    await load_options(t.store, ["F1"], ts("2026-11-22T09:00:00Z"), placed)
    await load_options(t.store, ["F2"], ts("2026-11-23T11:30:00Z"), placed)
    reports = await catch_up(t, ts("2026-11-23T11:47:00Z"))
    assert [to_iso(r.tick) for r in reports] == ["2026-11-23T11:30:00Z"]
    expired = await events_of(t, "koban.option.expired")
    assert [(e["subject"], e["time"]) for e in expired] == [
        ("F1", "2026-11-22T09:00:00Z"),
        ("F2", "2026-11-23T11:30:00Z"),
    ]


# --------------------------------------------------------------------------- several daemons


def _exactly_once(expired: list[dict[str, Any]], n: int) -> None:
    ids = Counter(e["data"]["optionId"] for e in expired)
    assert len(ids) == n and set(ids.values()) == {1}, (len(ids), Counter(ids.values()))


async def test_two_daemons_on_one_redis_expire_every_due_option_exactly_once(
    backend_url: str, tenant: str, clock: FixedClock
) -> None:
    n = 3000
    tick = ts("2026-11-23T10:00:00Z")
    clients = [connect(backend_url), connect(backend_url)]
    try:
        a, b = (make_tenant(c, tenant, clock) for c in clients)
        await load_options(a.store, (f"D{i:05d}" for i in range(n)), tick, tick - 2 * 86400)
        first, second = await asyncio.gather(
            process_tick(a, tick, batch=200, poll_s=0.01),
            process_tick(b, tick, batch=200, poll_s=0.01),
        )
        assert sorted([first.outcome, second.outcome]) == ["done_elsewhere", "processed"]
        assert first.expired + second.expired == n
        _exactly_once(await events_of(a, "koban.option.expired"), n)
        assert await a.store.redis.zcard(a.store.keys.expiries) == 0
    finally:
        for c in clients:
            await c.aclose()


async def test_two_daemons_catching_up_at_once_process_each_tick_once(
    backend_url: str, tenant: str
) -> None:
    clock = FixedClock(ts("2026-11-23T11:47:00Z"))
    clients = [connect(backend_url), connect(backend_url)]
    try:
        a, b = (make_tenant(c, tenant, clock) for c in clients)
        await a.store.redis.set(a.store.keys.ticked, ts("2026-11-23T10:00:00Z"))
        for k, due in enumerate(("10:30", "11:00", "11:30")):
            codes = (f"T{k}-{i:04d}" for i in range(400))
            await load_options(
                a.store, codes, ts(f"2026-11-23T{due}:00Z"), ts("2026-11-21T00:00:00Z")
            )
        reports_a, reports_b = await asyncio.gather(
            catch_up(a, clock.now(), poll_s=0.01), catch_up(b, clock.now(), poll_s=0.01)
        )
        processed = [r for r in reports_a + reports_b if r.outcome == "processed"]
        assert sorted(r.tick for r in processed) == [
            ts("2026-11-23T10:30:00Z"),
            ts("2026-11-23T11:00:00Z"),
            ts("2026-11-23T11:30:00Z"),
        ]
        expired = await events_of(a, "koban.option.expired")
        _exactly_once(expired, 1200)
        assert Counter(e["time"] for e in expired) == {
            "2026-11-23T10:30:00Z": 400,
            "2026-11-23T11:00:00Z": 400,
            "2026-11-23T11:30:00Z": 400,
        }
    finally:
        for c in clients:
            await c.aclose()


async def test_a_lease_whose_holder_died_lapses_and_the_tick_is_taken_over(t: Tenant) -> None:
    tick = ts("2026-11-23T10:00:00Z")
    await load_options(t.store, (f"K{i}" for i in range(50)), tick, tick - 86400)
    await t.store.redis.set(t.store.keys.tick_lease(tick), "dead-daemon", px=300)
    report = await process_tick(t, tick, poll_s=0.02)
    assert report.outcome == "processed" and report.took_over and report.expired == 50
    assert await t.store.redis.get(t.store.keys.tick_lease(tick)) is None  # released


async def test_a_waiting_daemon_returns_when_the_holder_marks_the_tick_done(t: Tenant) -> None:
    tick = ts("2026-11-23T10:00:00Z")
    lease = t.store.keys.tick_lease(tick)
    await t.store.redis.set(lease, "other-daemon", px=10_000)
    waiting = asyncio.create_task(process_tick(t, tick, poll_s=0.02))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await t.store.redis.set(t.store.keys.ticked, tick)  # the holder finished
    report = await asyncio.wait_for(waiting, 5)
    assert report.outcome == "done_elsewhere"
    assert await t.store.redis.get(lease) == b"other-daemon"  # never touched


async def test_a_slow_sweep_keeps_its_lease(t: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.usecases.ticking as ticking

    tick = ts("2026-11-23T10:00:00Z")
    real = ticking.sweep_expiries
    seen: list[bytes | None] = []

    async def slow(store: Any, upto: int, batch: int = 500) -> Any:
        await asyncio.sleep(0.5)  # longer than the lease's 150 ms TTL
        seen.append(await store.redis.get(store.keys.tick_lease(upto)))
        return await real(store, upto, batch=batch)

    monkeypatch.setattr(ticking, "sweep_expiries", slow)
    report = await process_tick(t, tick, lease_ttl_ms=150)
    assert report.outcome == "processed"
    assert seen[0] is not None  # renewed while the sweep ran


async def test_a_cancelled_tick_hands_its_lease_back_and_records_nothing(
    t: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.usecases.ticking as ticking

    tick = ts("2026-11-23T10:00:00Z")
    started = asyncio.Event()

    async def stuck(store: Any, upto: int, batch: int = 500) -> Any:
        started.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(ticking, "sweep_expiries", stuck)
    task = asyncio.create_task(process_tick(t, tick))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await t.store.redis.get(t.store.keys.tick_lease(tick)) is None
    assert await last_processed(t) is None


# --------------------------------------------------------------------------- the daemon


def _daemon(t: Tenant, **kw: Any) -> Daemon:
    return Daemon(_tenants(t), t.store.redis, koban_factory=lambda tenant, session: None, **kw)


def _tenants(*ts_: Tenant) -> Any:
    from service.tenancy import Tenants

    return Tenants({x.name: x for x in ts_})


async def test_a_daemon_started_at_11_47_down_since_10_15_processes_10_30_11_00_11_30(
    t: Tenant, clock: FixedClock
) -> None:
    await t.store.redis.set(t.store.keys.ticked, ts("2026-11-23T10:00:00Z"))
    for i, due in enumerate(("10:30", "11:00", "11:30", "12:00")):
        await load_options(
            t.store, [f"S{i}"], ts(f"2026-11-23T{due}:00Z"), ts("2026-11-21T00:00:00Z")
        )
    clock.set(ts("2026-11-23T11:47:00Z"))
    daemon = _daemon(t)
    with captured_logs() as logs:
        await daemon.start()
        try:
            assert await t.store.redis.get(SCHEDULER_HEARTBEAT_KEY) is not None
            ids = {job.id for job in daemon.jobs}
            assert {f"tick:{t.name}", f"notices:{t.name}", f"retention:{t.name}"} <= ids
            assert not any(i.startswith(("sync:", "reconcile:", "intents:")) for i in ids)
        finally:
            summary = await daemon.stop("test")
    ticks = [e["tick"] for e in logs if e["event"] == "tick" and e["outcome"] == "processed"]
    assert ticks == ["2026-11-23T10:30:00Z", "2026-11-23T11:00:00Z", "2026-11-23T11:30:00Z"]
    started = next(i for i, e in enumerate(logs) if e["event"] == "scheduler_started")
    assert all(i < started for i, e in enumerate(logs) if e["event"] == "tick")
    expired = await events_of(t, "koban.option.expired")
    assert [e["time"] for e in expired] == [
        "2026-11-23T10:30:00Z",
        "2026-11-23T11:00:00Z",
        "2026-11-23T11:30:00Z",
    ]
    assert (summary.ticks, summary.expired) == (3, 3)
    [stopped] = [e for e in logs if e["event"] == "scheduler_stopped"]
    assert stopped["ticks"] == 3 and stopped["expired"] == 3 and stopped["reason"] == "test"


async def test_a_job_runs_with_its_clock_value_and_failures_are_counted(
    t: Tenant, clock: FixedClock
) -> None:
    daemon = _daemon(t)
    daemon.jobs = []
    seen: list[int] = []

    async def fine(now: int) -> None:
        seen.append(now)

    async def broken(now: int) -> None:
        raise RuntimeError("boom")

    from apscheduler.triggers.interval import IntervalTrigger

    from service.entrypoints.scheduler import Job

    every = IntervalTrigger(seconds=60)
    with captured_logs() as logs:
        await daemon.run_job(Job("fine", every, fine, t))
        await daemon.run_job(Job("broken", every, broken, t))
    assert seen == [clock.now()]
    assert (daemon.summary.jobs_run, daemon.summary.jobs_failed) == (1, 1)
    assert [e["job"] for e in logs if e["event"] == "job_failed"] == ["broken"]


async def test_stop_waits_for_the_running_tick_then_logs_one_summary_line(
    t: Tenant, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.usecases.ticking as ticking

    real = ticking.sweep_expiries
    entered = asyncio.Event()

    async def slowish(store: Any, upto: int, batch: int = 500) -> Any:
        entered.set()
        await asyncio.sleep(0.3)
        return await real(store, upto, batch=batch)

    tick = ts("2026-11-23T10:00:00Z")
    await load_options(t.store, ["W1"], tick, tick - 86400)
    clock.set(tick)
    daemon = _daemon(t, intervals=Intervals(heartbeat_s=3600))
    await t.store.redis.set(t.store.keys.ticked, tick - 1800)
    monkeypatch.setattr(ticking, "sweep_expiries", slowish)
    [job] = [j for j in await _jobs(daemon) if j.id.startswith("tick:")]
    running = asyncio.create_task(daemon.run_job(job))
    await entered.wait()
    with captured_logs() as logs:
        await daemon.stop("SIGTERM")
    assert running.done() and await last_processed(t) == tick  # finished, not cut
    assert [e["event"] for e in logs].count("scheduler_stopped") == 1
    assert daemon.summary.handed_back == 0


async def test_stop_hands_a_tick_back_after_the_grace_period(
    t: Tenant, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.usecases.ticking as ticking

    entered = asyncio.Event()

    async def stuck(store: Any, upto: int, batch: int = 500) -> Any:
        entered.set()
        await asyncio.sleep(3600)

    tick = ts("2026-11-23T10:00:00Z")
    clock.set(tick)
    daemon = _daemon(t, shutdown_grace_s=0.2)
    monkeypatch.setattr(ticking, "sweep_expiries", stuck)
    [job] = [j for j in await _jobs(daemon) if j.id.startswith("tick:")]
    running = asyncio.create_task(daemon.run_job(job))
    await entered.wait()
    summary = await daemon.stop("SIGTERM")
    assert running.done() and summary.handed_back == 1
    assert await t.store.redis.get(t.store.keys.tick_lease(tick)) is None  # handed back
    assert await last_processed(t) is None


async def _jobs(daemon: Daemon) -> list[Any]:
    from service.entrypoints.scheduler import job_table

    return job_table(
        daemon.tenants, daemon.redis, {}, intervals=daemon.intervals, stop=daemon.stopping
    )


async def test_the_sandbox_clock_job_follows_a_clock_moved_by_another_process(
    redis: Redis, tenant: str
) -> None:
    from service.clock import TestClock
    from service.usecases.sandbox_clock import advance_offset

    base = FixedClock(ts("2026-11-23T10:10:00Z"))
    mine = make_tenant(redis, tenant, TestClock(base), sandbox=True)  # type: ignore[arg-type]
    theirs = make_tenant(redis, tenant, TestClock(base), sandbox=True)  # type: ignore[arg-type]
    await load_options(mine.store, ["X1"], ts("2026-11-23T11:00:00Z"), ts("2026-11-21T00:00:00Z"))
    daemon = _daemon(mine)
    [job] = [j for j in await _jobs(daemon) if j.id == f"clock:{tenant}"]
    await daemon.run_job(job)  # a fresh install: the latest tick, 10:00
    assert await last_processed(mine) == ts("2026-11-23T10:00:00Z")
    await advance_offset(theirs, ts("2026-11-23T11:40:00Z"))  # the API process moved it
    reports = await daemon.run_job(job)
    assert [to_iso(r.tick) for r in cast(list[Any], reports)] == [
        "2026-11-23T10:30:00Z",
        "2026-11-23T11:00:00Z",
        "2026-11-23T11:30:00Z",
    ]
    assert mine.clock.now() == ts("2026-11-23T11:40:00Z")
    [expired] = await events_of(mine, "koban.option.expired")
    assert expired["time"] == "2026-11-23T11:00:00Z"
