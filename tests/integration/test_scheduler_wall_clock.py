"""The daemon's APScheduler fires the tick job on the wall clock (freezegun, with the event
loop's own clock left real): across Europe/Paris's changes of 2026-10-25 and 2027-03-28 it
fires at every UNIX multiple of 1800 s, each tick once, and the tenant's `SystemClock`
hands the job that tick. A trigger on other minutes, or in a zone whose offset is not a
whole number of half hours, never comes due at those instants and the wait fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from freezegun import freeze_time
from redis.asyncio import Redis

from service.clock import SystemClock
from service.entrypoints.scheduler import Daemon, Intervals
from service.tenancy import Tenant, Tenants
from service.usecases.ticking import last_processed
from tests.support.api_harness import make_tenant
from tests.support.instants import ts
from tests.support.loading import load_options
from tests.support.rules import PARIS

# Only the tick job comes due while the frozen clock is moved by half hours.
QUIET = Intervals(notices_s=86400, retention_s=86400, heartbeat_s=86400)
GIVE_UP_S = 60.0  # a hang guard, not a measure: the job must run at all


def at(instant: int) -> datetime:
    return datetime.fromtimestamp(instant, UTC)


async def expired_at(tenant: Tenant) -> list[int]:
    store = tenant.store
    entries = cast(list[Any], await store.redis.xrange(store.keys.events))
    events = [orjson.loads(fields[b"ce"]) for _, fields in entries]
    return [
        ts(e["time"]) for e in events if e["type"] == "koban.option.expired"
    ]  # one option was due at each tick


async def drive(redis: Redis, name: str, first: str, last: str) -> tuple[list[int], Tenant]:
    """Start the daemon a second before `first`, then set the wall clock on each tick up to
    `last` and wake the scheduler: it runs what is due by the (frozen) wall clock."""
    ticks = list(range(ts(first), ts(last) + 1, 1800))
    tenant = make_tenant(redis, name, SystemClock())  # type: ignore[arg-type]
    for tick in ticks:
        await load_options(tenant.store, [f"L{tick}"], tick, ts(first) - 86400)
    seen: list[int] = []
    fired: asyncio.Queue[datetime] = asyncio.Queue()

    def on_run(event: JobExecutionEvent) -> None:
        if event.job_id == f"tick:{name}":
            fired.put_nowait(event.scheduled_run_time)

    with freeze_time(at(ticks[0] - 1), real_asyncio=True) as frozen:
        daemon = Daemon(
            Tenants({name: tenant}),
            redis,
            koban_factory=lambda tenant, session: None,
            intervals=QUIET,
        )
        await daemon.start()  # catches up the tick before `first`
        try:
            scheduler = daemon._scheduler
            assert scheduler is not None
            job = scheduler.get_job(f"tick:{name}")
            assert job is not None and job.next_run_time == at(ticks[0])
            scheduler.add_listener(on_run, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
            for tick in ticks:
                frozen.move_to(at(tick))
                scheduler.wakeup()
                async with asyncio.timeout(GIVE_UP_S):
                    when = await fired.get()
                seen.append(int(when.timestamp()))
                assert await last_processed(tenant) == tick
                job = scheduler.get_job(f"tick:{name}")
                assert job is not None and job.next_run_time == at(tick + 1800)
        finally:
            await daemon.stop("test")
    return seen, tenant


@pytest.mark.parametrize(
    ("first", "last", "local_offsets"),
    [
        # 02:00–03:00 local time happens twice: the ticks in it are distinct instants
        ("2026-10-24T23:30:00Z", "2026-10-25T02:30:00Z", {2, 1}),
        # 02:00–03:00 local time does not exist: no tick is skipped or doubled around it
        ("2027-03-28T00:00:00Z", "2027-03-28T02:30:00Z", {1, 2}),
    ],
    ids=["autumn", "spring"],
)
async def test_ticks_fire_at_every_half_hour_of_unix_time_across_paris_dst(
    redis: Redis, tenant: str, first: str, last: str, local_offsets: set[int]
) -> None:
    seen, t = await drive(redis, tenant, first, last)
    expected = list(range(ts(first), ts(last) + 1, 1800))
    assert seen == expected and all(tick % 1800 == 0 for tick in seen)
    assert await expired_at(t) == expected  # each job got its tick from the clock
    local = [at(tick).astimezone(PARIS) for tick in seen]
    assert {d.minute for d in local} == {0, 30}
    offsets = {d.utcoffset() for d in local}
    assert offsets == {timedelta(hours=h) for h in local_offsets}
