"""Expiring notices (service.usecases.notices): `koban.option.expiring`, `expiring_notice`
before the expiry tick, once per option — from the scheduler's cursor runs, from the
transitions that put an option inside the window, and ahead of the expiry when a clock
jumps over both."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from service.clock import FixedClock, TestClock
from service.entrypoints.scheduler import notices_job
from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.notices import (
    NOTICE_LAG_S,
    send_notices,
)
from service.usecases.ticking import advance_clock, process_tick
from statecharts import transitions as tr
from statecharts.model import Lot, Option
from tests.support.api_harness import make_tenant
from tests.support.instants import ts
from tests.support.loading import EMPTY, load_options, lot_with_option

# Every test here on a Redis backend also runs on the local Redis Cluster.
pytestmark = pytest.mark.cluster


HOUR = 3600
E = ts("2026-11-23T12:30:00Z")  # the options' expiry tick


async def events_of(store: LotStore, kind: str | None = None) -> list[dict[str, Any]]:
    entries = cast(list[Any], await store.redis.xrange(store.keys.events))
    out = [orjson.loads(fields[b"ce"]) for _, fields in entries]
    return [e for e in out if kind is None or e["type"] == kind]


def types_of(events: list[dict[str, Any]], subject: str) -> list[tuple[str, str]]:
    return [(e["type"], e["time"]) for e in events if e["subject"] == subject]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(ts("2026-11-23T09:00:00Z"))


@pytest.fixture
def t(redis: Redis, tenant: str, clock: FixedClock) -> Tenant:
    return make_tenant(redis, tenant, clock)  # expiring_notice: the default PT2H


# --------------------------------------------------------------------------- the data


# --------------------------------------------------------------------------- cursor runs


async def test_a_notice_is_sent_once_at_its_time(t: Tenant) -> None:
    await load_options(t.store, ["N1"], E, E - 2 * 86400)
    assert (await send_notices(t.store, E - 2 * HOUR - 1)).notices == 0
    report = await send_notices(t.store, E - 2 * HOUR)
    assert report.notices == 1 and report.lots == 1
    for upto in (E - 2 * HOUR, E - HOUR, E - 1):
        assert (await send_notices(t.store, upto)).notices == 0
    [notice] = await events_of(t.store, "koban.option.expiring")
    assert notice["time"] == "2026-11-23T10:30:00Z"
    assert notice["data"]["optionId"] == "N1o" and notice["data"]["actor"] == "sweep"
    assert notice["data"]["effectiveExpiry"] == "2026-11-23T12:30:00Z"
    lot = await t.store.load("N1")
    assert lot is not None and lot.options[0].noticed and lot.version == 2  # bumped once
    assert notice["lotversion"] == 2


async def test_notices_come_with_the_tick_that_reaches_them(t: Tenant) -> None:
    await load_options(t.store, ["N1"], E, E - 2 * 86400)
    assert (await process_tick(t, ts("2026-11-23T10:00:00Z"))).notices == 0
    report = await process_tick(t, ts("2026-11-23T10:30:00Z"))  # 10:30 + 2 h = 12:30
    assert report.notices == 1 and report.expired == 0
    assert types_of(await events_of(t.store), "N1")[-1] == (
        "koban.option.expiring",
        "2026-11-23T10:30:00Z",
    )
    for tick in ("11:00", "11:30", "12:00"):
        assert (await process_tick(t, ts(f"2026-11-23T{tick}:00Z"))).notices == 0
    assert (await process_tick(t, E)).expired == 1
    assert [x for x, _ in types_of(await events_of(t.store), "N1")] == [
        "koban.lot.imported",
        "koban.option.placed",
        "koban.option.expiring",
        "koban.option.expired",
    ]


async def test_an_offset_off_the_half_hours_is_sent_by_the_interval_job(
    redis: Redis, tenant: str, clock: FixedClock
) -> None:
    t = make_tenant(redis, tenant, clock, expiring_notice="PT45M")
    await load_options(t.store, ["N1"], E, E - 2 * 86400)
    assert (await process_tick(t, ts("2026-11-23T11:30:00Z"))).notices == 0
    assert (await notices_job(t, ts("2026-11-23T11:44:59Z"))).notices == 0
    assert (await notices_job(t, ts("2026-11-23T11:45:00Z"))).notices == 1
    [notice] = await events_of(t.store, "koban.option.expiring")
    assert notice["time"] == "2026-11-23T11:45:00Z"


async def test_an_option_placed_inside_the_window_gets_its_notice_at_placement(
    redis: Redis, tenant: str, clock: FixedClock
) -> None:
    t = make_tenant(redis, tenant, clock, option_lifetime="PT1H")
    now = ts("2026-11-23T09:10:00Z")
    await t.store.import_lot("W1", now - 60)
    option = await t.store.place_local("W1", "p1", None, now)
    assert option.expiry == ts("2026-11-23T10:30:00Z") and option.noticed
    events = await events_of(t.store)
    assert types_of(events, "W1")[1:] == [
        ("koban.option.placed", "2026-11-23T09:10:00Z"),
        ("koban.option.expiring", "2026-11-23T09:10:00Z"),
    ]
    assert events[-1]["lotversion"] == events[-2]["lotversion"]  # one transition
    assert (await send_notices(t.store, now + 60)).notices == 0  # not twice


async def test_a_prolongation_into_the_window_gets_its_notice_and_only_once(
    t: Tenant,
) -> None:
    now = ts("2026-11-23T09:10:00Z")
    await load_options(t.store, ["P1"], ts("2026-11-23T10:00:00Z"), now - 86400)
    assert (await send_notices(t.store, now)).notices == 1  # 10:00 - 2 h <= 09:10
    await t.store.prolong("P1", 1, ts("2026-11-23T11:00:00Z"), now + 60)
    assert len(await events_of(t.store, "koban.option.expiring")) == 1  # once per option

    await load_options(t.store, ["P2"], ts("2026-11-23T10:00:00Z"), now - 86400)
    lot = await t.store.load("P2")
    assert lot is not None and not lot.options[0].noticed
    # P2's notice is due (08:00) but no run has given it yet: the prolongation does.
    await t.store.prolong("P2", 1, ts("2026-11-23T10:40:00Z"), now)
    assert types_of(await events_of(t.store), "P2")[-2:] == [
        ("koban.option.prolonged", "2026-11-23T09:10:00Z"),
        ("koban.option.expiring", "2026-11-23T09:10:00Z"),
    ]


async def test_a_promotion_restarting_the_clock_into_the_window_is_noticed_by_the_sweep(
    redis: Redis, tenant: str, clock: FixedClock
) -> None:
    t = make_tenant(redis, tenant, clock, option_lifetime="PT1H", rank2_clock="restart")
    tick = ts("2026-11-23T10:30:00Z")
    lot = lot_with_option("R1", tick, tick - 86400, noticed=True)
    second = lot_with_option("R1", ts("2026-11-23T14:00:00Z"), tick - 3600).options[0]
    second.id, second.rank, second.holder = "R1o2", 2, "p2"
    lot.options.append(second)
    lot.config = "two_options"
    await t.store.commit([t.store.transition(EMPTY, lot, [], tick - 3600)], mode="each")
    report = await process_tick(t, tick)
    assert (report.expired, report.promoted, report.notices) == (1, 1, 0)
    tail = types_of(await events_of(t.store), "R1")
    assert tail == [
        ("koban.option.expired", "2026-11-23T10:30:00Z"),
        ("koban.option.promoted", "2026-11-23T10:30:00Z"),
        ("koban.option.expiring", "2026-11-23T10:30:00Z"),  # restarted: 11:30, in the window
    ]
    promoted = await t.store.load("R1")
    assert promoted is not None and promoted.options[0].expiry == ts("2026-11-23T11:30:00Z")


async def test_a_clock_jump_over_notice_and_expiry_gives_the_notice_then_the_expiry(
    redis: Redis, tenant: str
) -> None:
    base = FixedClock(ts("2026-11-23T09:10:00Z"))
    t = make_tenant(redis, tenant, TestClock(base), sandbox=True)  # type: ignore[arg-type]
    await load_options(t.store, ["J1"], E, E - 2 * 86400)
    await load_options(t.store, ["J2"], ts("2026-11-23T11:00:00Z"), E - 2 * 86400)
    moved = await advance_clock(t, ts("2026-11-23T14:00:00Z"))
    assert moved.ticks[0].tick == ts("2026-11-23T09:30:00Z")
    events = await events_of(t.store)
    for code, expiry, notice in (
        ("J1", "2026-11-23T12:30:00Z", "2026-11-23T10:30:00Z"),
        ("J2", "2026-11-23T11:00:00Z", "2026-11-23T09:00:00Z"),  # due before the jump
    ):
        assert types_of(events, code)[2:] == [
            ("koban.option.expiring", notice),
            ("koban.option.expired", expiry),
        ]


async def test_two_concurrent_runs_send_each_notice_once(
    backend_url: str, tenant: str, clock: FixedClock
) -> None:
    n = 1500
    clients = [connect(backend_url), connect(backend_url)]
    try:
        a, b = (make_tenant(c, tenant, clock) for c in clients)
        await load_options(a.store, (f"C{i:04d}" for i in range(n)), E, E - 86400)
        ra, rb = await asyncio.gather(
            send_notices(a.store, E - HOUR, batch=100), send_notices(b.store, E - HOUR, batch=100)
        )
        assert ra.notices + rb.notices == n
        notices = await events_of(a.store, "koban.option.expiring")
        assert Counter(Counter(e["subject"] for e in notices).values()) == {1: n}
    finally:
        for c in clients:
            await c.aclose()


async def test_a_run_and_a_write_on_the_same_lot_give_one_notice(t: Tenant) -> None:
    now = ts("2026-11-23T10:40:00Z")
    await load_options(t.store, (f"M{i}" for i in range(20)), E, E - 86400)
    await asyncio.gather(
        send_notices(t.store, now, batch=5),
        *(t.store.place_local(f"M{i}", f"other{i}", None, now) for i in range(0, 20, 4)),
    )
    notices = await events_of(t.store, "koban.option.expiring")
    per_option = Counter(e["data"]["optionId"] for e in notices)
    assert {f"M{i}o" for i in range(20)} <= set(per_option)
    assert set(per_option.values()) == {1}


async def test_the_cursor_only_moves_forward_and_starts_now_on_a_fresh_install(
    t: Tenant,
) -> None:
    store = t.store
    await load_options(store, ["old"], ts("2026-11-23T10:00:00Z"), E - 86400)
    report = await send_notices(store, ts("2026-11-23T10:00:00Z"))
    # Fresh: from 10:00 on; "old" is due at 10:00 itself (its notice time long past).
    assert (report.since, report.until) == (ts("2026-11-23T10:00:00Z"), E - 1800)
    assert report.notices == 0
    cursor = int(await store.redis.get(store.keys.notice_cursor))
    assert cursor == ts("2026-11-23T12:00:00Z") - NOTICE_LAG_S
    again = await send_notices(store, ts("2026-11-23T09:00:00Z"))  # an older instant
    assert again.since is None and int(await store.redis.get(store.keys.notice_cursor)) == cursor


async def test_an_option_committed_behind_the_cursor_is_caught_by_the_next_run(
    t: Tenant,
) -> None:
    """A transition decided a moment before a run (its `now` just before the notice time)
    and committed after the run read the index: the cursor's lag reads it again."""
    store = t.store
    u = E - 2 * HOUR  # the run's instant: E's notice is due exactly now
    assert (await send_notices(store, u)).notices == 0  # nothing there yet
    late = lot_with_option("LATE", E, u - 1)  # decided at u - 1: not due for that write
    await store.commit([store.transition(EMPTY, late, [], u - 1)], mode="each")
    assert (await send_notices(store, u + 30)).notices == 1


async def test_opaque_placeholders_without_a_date_owe_no_notice(t: Tenant) -> None:
    lot = Lot("O1", config="one_option", status="OPTION")
    lot.options.append(Option("x", 1, None, None, 0, None, None, source="koban"))
    assert tr.expiring_notices(lot, E, t.rules) == []


# --------------------------------------------------------------------------- the fast path
