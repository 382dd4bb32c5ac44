"""The store against a real redis-server, as time passes: ticks and lifetimes (across DST),
prolongation, promotion of rank 2, and the sweep (idempotent, crash-safe, racing writes,
repairing its index).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from redis.asyncio import Redis

from service.storage.store import LotStore
from service.storage.sweep_script import Plan
from service.usecases import sweep as sweep_module
from service.usecases.sweep import sweep_expiries
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Rules
from statecharts.ticks import parse_duration
from tests.support.instants import ts
from tests.support.rules import make_rules
from tests.support.store_env import T0, code_of, lots, store_over, stream, types

# Every test here also runs on the local Redis Cluster, through redis-py: `MuxReader` serves
# one server only (`for_client` gives None for a cluster client).
pytestmark = pytest.mark.cluster(single_only={"store": "mux"})


@pytest.fixture(params=["redis-py", "mux"])
async def store(
    request: pytest.FixtureRequest, redis: Redis, tenant: str, rules: Rules
) -> AsyncIterator[LotStore]:
    """The store through each transport of its hot path (tests/support/store_env.py)."""
    async with store_over(request.param, redis, tenant, rules) as store:
        yield store


# --- ticks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deadline", "expiry"),
    [
        ("2026-11-23T10:29:59Z", "2026-11-23T10:30:00Z"),
        ("2026-11-23T10:30:00Z", "2026-11-23T10:30:00Z"),
        ("2026-11-23T10:30:01Z", "2026-11-23T11:00:00Z"),
    ],
)
async def test_tick_boundaries(store: LotStore, deadline: str, expiry: str) -> None:
    await lots(store, "A1")
    intent = await store.reserve_placement("A1", "p1", None, T0)
    option = await store.confirm_placement("A1", intent.id, T0, koban_deadline=ts(deadline))
    assert option.expiry == ts(expiry) and option.source == "koban"
    just_before = await store.read("A1", ts(expiry) - 1)
    at_tick = await store.read("A1", ts(expiry))
    assert just_before is not None and just_before.options
    assert at_tick is not None and not at_tick.options and at_tick.config == "free"
    report = await sweep_expiries(store, ts(expiry) - 1)
    assert report.expired == 0
    report = await sweep_expiries(store, ts(expiry))
    assert report.expired == 1
    events = await stream(store)
    assert events[-1]["type"] == "koban.option.expired"
    assert events[-1]["time"] == expiry


@pytest.mark.parametrize(
    ("placed", "expiry"),
    [
        # Saturday before spring-forward: same wall clock two days later is 47 h later.
        ("2026-03-28T10:15:00+01:00", "2026-03-30T08:30:00Z"),
        # Saturday before fall-back: 49 h later.
        ("2026-10-24T10:15:00+02:00", "2026-10-26T09:30:00Z"),
    ],
)
async def test_two_day_lifetime_across_dst(store: LotStore, placed: str, expiry: str) -> None:
    await lots(store, "A1")
    at = int(datetime.fromisoformat(placed).timestamp())
    option = await store.place_local("A1", "p1", None, at)
    assert option.expiry == ts(expiry) and option.source == "estimated"


# --- prolongation ---------------------------------------------------------------------


async def test_prolongation_once_later_only_on_a_tick(redis: Redis, tenant: str) -> None:
    store = LotStore(redis, tenant, make_rules(max_prolongation=parse_duration("P3D")))
    await lots(store, "A1")
    option = await store.place_local("A1", "p1", None, T0)  # deadline T0 + 2 days, on a tick
    assert option.expiry == T0 + 2 * 86400
    with pytest.raises(RuleViolation) as e:  # same tick is not later
        await store.prolong("A1", 1, T0 + 2 * 86400 - 600, T0)
    assert code_of(e) is ErrorCode.PROLONGATION_NOT_LATER
    with pytest.raises(RuleViolation) as e:  # beyond original deadline + P3D
        await store.prolong("A1", 1, T0 + 5 * 86400 + 1, T0)
    assert code_of(e) is ErrorCode.PROLONGATION_TOO_LONG
    with pytest.raises(RuleViolation) as e:
        await store.prolong("A1", 1, T0 + 3 * 86400, T0, holder="someone-else")
    assert code_of(e) is ErrorCode.OPTION_MOVED
    exactly_on_tick = T0 + 3 * 86400 + 1800
    prolonged = await store.prolong("A1", 1, exactly_on_tick, T0, holder="p1")
    assert prolonged.expiry == exactly_on_tick and prolonged.prolonged
    with pytest.raises(RuleViolation) as e:
        await store.prolong("A1", 1, exactly_on_tick + 3600, T0)
    assert code_of(e) is ErrorCode.ALREADY_PROLONGED and e.value.koban_code == "02"
    with pytest.raises(RuleViolation) as e:
        await store.prolong("A1", 2, exactly_on_tick + 3600, T0)
    assert code_of(e) is ErrorCode.OPTION_NOT_FOUND and e.value.koban_code == "01"
    assert (await store.read("A1", exactly_on_tick - 1)).options  # type: ignore[union-attr]
    report = await sweep_expiries(store, exactly_on_tick)
    assert report.expired == 1


# --- promotion ------------------------------------------------------------------------


@pytest.mark.parametrize("clock", ["own", "restart"])
async def test_promotion_modes(redis: Redis, tenant: str, clock: str) -> None:
    store = LotStore(redis, tenant, make_rules(rank2_clock=clock))
    await lots(store, "A1")
    first = await store.place_local("A1", "p1", None, T0)
    second = await store.place_local("A1", "p2", None, T0 + 3600)  # due one hour later
    assert first.expiry is not None and second.expiry is not None
    report = await sweep_expiries(store, first.expiry)
    assert (report.expired, report.promoted) == (1, 1)
    lot = await store.load("A1")
    assert lot is not None and lot.config == "one_option"
    (promoted,) = lot.options
    assert promoted.rank == 1 and promoted.holder == "p2"
    if clock == "own":
        assert promoted.expiry == second.expiry
    else:  # the lifetime restarts from the promotion instant (the tick)
        assert promoted.expiry == first.expiry + 2 * 86400
        assert promoted.source == "estimated"
    events = await stream(store)
    assert [e["type"] for e in events[-2:]] == ["koban.option.expired", "koban.option.promoted"]
    assert events[-1]["time"] == events[-2]["time"]
    assert events[-1]["lotversion"] == events[-2]["lotversion"]  # one bump, two events


async def test_both_ranks_due_at_one_tick_both_expire(store: LotStore) -> None:
    await lots(store, "A1")
    await store.place_local("A1", "p1", None, T0 + 60)
    await store.place_local("A1", "p2", None, T0 + 120)  # same tick (10:30 two days on)
    report = await sweep_expiries(store, T0 + 2 * 86400 + 1800)
    assert (report.expired, report.promoted) == (2, 0)
    assert (await types(store))[-2:] == ["koban.option.expired", "koban.option.expired"]
    lot = await store.load("A1")
    assert lot is not None and lot.config == "free" and not lot.options


async def test_cancel_rank_one_promotes_rank_two(store: LotStore) -> None:
    await lots(store, "A1")
    await store.place_local("A1", "p1", None, T0)
    await store.place_local("A1", "p2", None, T0)
    with pytest.raises(RuleViolation) as e:
        await store.cancel("A1", 1, T0, holder="p2")
    assert code_of(e) is ErrorCode.OPTION_MOVED
    ended = await store.cancel("A1", 1, T0, holder="p1")
    assert ended.holder == "p1"
    lot = await store.load("A1")
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, "p2")]
    assert (await types(store))[-2:] == ["koban.option.cancelled", "koban.option.promoted"]


# --- the sweep ------------------------------------------------------------------------


async def test_expire_due_twice_gives_one_event_per_option(store: LotStore) -> None:
    codes = [f"L{i}" for i in range(30)]
    await lots(store, *codes)
    for i, code in enumerate(codes):
        await store.place_local(code, f"p{i}", None, T0 + (i % 3) * 1800)
    tick = T0 + 2 * 86400 + 3600
    first = await sweep_expiries(store, tick, batch=7)
    second = await sweep_expiries(store, tick, batch=7)
    assert first.expired == 30 and first.batches >= 5
    assert second.expired == 0 and second.batches == 0
    expired = [e for e in await stream(store) if e["type"] == "koban.option.expired"]
    assert len(expired) == 30
    assert len({e["data"]["optionId"] for e in expired}) == 30  # type: ignore[index]
    # each event carries its option's own tick, not the sweep's
    assert {e["time"] for e in expired} == {
        "2026-11-25T10:00:00Z",
        "2026-11-25T10:30:00Z",
        "2026-11-25T11:00:00Z",
    }
    assert await store.redis.zcard(store.keys.expiries) == 0


async def test_sweep_crash_between_batches_loses_nothing(
    store: LotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = [f"L{i}" for i in range(20)]
    await lots(store, *codes)
    for i, code in enumerate(codes):
        await store.place_local(code, f"p{i}", None, T0)
    tick = T0 + 2 * 86400
    real_send = sweep_module._Sweeper.send_apply
    calls = 0

    async def crashing_send(
        self: sweep_module._Sweeper,
        plans: list[Plan],
        command: bytes | None = None,
    ) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # two chunks sent (maybe not yet applied), the third never leaves
            raise ConnectionError("process died here")
        await real_send(self, plans, command)

    monkeypatch.setattr(sweep_module._Sweeper, "send_apply", crashing_send)
    with pytest.raises(ConnectionError):
        await sweep_expiries(store, tick, batch=3)
    remaining = await store.redis.zcard(store.keys.expiries)
    assert (20 - remaining) % 3 == 0 and remaining < 20  # whole chunks landed, no part of one
    monkeypatch.setattr(sweep_module._Sweeper, "send_apply", real_send)
    report = await sweep_expiries(store, tick, batch=3)
    assert report.expired == remaining
    expired = [e for e in await stream(store) if e["type"] == "koban.option.expired"]
    assert len(expired) == 20
    assert len({e["subject"] for e in expired}) == 20


async def test_sweep_and_api_writes_race_without_duplicates(store: LotStore) -> None:
    codes = [f"L{i}" for i in range(40)]
    await lots(store, *codes)
    for i, code in enumerate(codes):
        await store.place_local(code, f"p{i}", None, T0)
    tick = T0 + 2 * 86400

    async def writer() -> None:  # places on the same lots at the tick: each write expires first
        for i, code in enumerate(codes):
            await store.place_local(code, f"q{i}", None, tick)

    await asyncio.gather(sweep_expiries(store, tick, batch=5), writer())
    expired = [e for e in await stream(store) if e["type"] == "koban.option.expired"]
    assert len(expired) == 40
    for code in codes:
        lot = await store.load(code)
        assert lot is not None and [o.holder for o in lot.options] == [f"q{codes.index(code)}"]


async def test_sweep_repairs_a_tampered_index(store: LotStore) -> None:
    await lots(store, "A1", "A2")
    option = await store.place_local("A1", "p1", None, T0)
    later = option.expiry
    assert later is not None
    tick = T0 + 3600
    # an entry for a lot that does not exist, and one with a wrong (too early) score
    await store.redis.zadd(store.keys.expiries, {"GONE/x": tick, f"A1/{option.id}": tick})
    report = await sweep_expiries(store, tick)
    assert report.expired == 0 and report.repaired == 2
    index = dict(await store.redis.zrange(store.keys.expiries, 0, -1, withscores=True))
    assert index == {f"A1/{option.id}".encode(): float(later)}
