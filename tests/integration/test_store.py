"""The store against a real redis-server: rules, ticks, promotion, concurrency, events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import orjson
import pytest
from redis.asyncio import Redis

from service.storage.redis_mux import MuxReader
from service.storage.store import ChangeFn, Counts, LotStore
from service.storage.sweep_script import Plan
from service.usecases import sweep as sweep_module
from service.usecases.sweep import sweep_expiries
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Rules
from statecharts.ticks import parse_duration
from tests.support.instants import ts
from tests.support.rules import make_rules

# Every test here also runs on the local Redis Cluster, through redis-py: `MuxReader` serves
# one server only (`for_client` gives None for a cluster client).
pytestmark = pytest.mark.cluster(single_only={"store": "mux"})


T0 = ts("2026-11-23T10:00:00Z")


async def stream(store: LotStore) -> list[dict[str, object]]:
    entries = await store.redis.xrange(store.keys.events)
    return [orjson.loads(fields[b"ce"]) for _, fields in entries]


async def types(store: LotStore) -> list[str]:
    return [str(e["type"]) for e in await stream(store)]


async def lots(store: LotStore, *codes: str, now: int = T0) -> None:
    for code in codes:
        await store.import_lot(code, now, program="P1")


@pytest.fixture(params=["redis-py", "mux"])
async def store(
    request: pytest.FixtureRequest, redis: Redis, tenant: str, rules: Rules
) -> AsyncIterator[LotStore]:
    """The store through each transport of its hot path: redis-py, or the shared
    connection `koban-options api` installs (`LotStore.fast`)."""
    store = LotStore(redis, tenant, rules)
    if request.param == "mux":
        store.fast = MuxReader.for_client(redis)
    yield store
    if store.fast is not None:
        await store.fast.aclose()


def code_of(excinfo: pytest.ExceptionInfo[RuleViolation]) -> ErrorCode:
    return excinfo.value.code


# --- placement refusals and their order ---------------------------------------------------


async def test_unknown_lot_is_refused(store: LotStore) -> None:
    with pytest.raises(RuleViolation) as e:
        await store.place_local("NOPE", "p1", None, T0)
    assert code_of(e) is ErrorCode.LOT_UNKNOWN


async def test_rank_two_only_after_rank_one(store: LotStore) -> None:
    await lots(store, "A1")
    with pytest.raises(RuleViolation) as e:
        await store.place_local("A1", "p1", None, T0, rank=2)
    assert code_of(e) is ErrorCode.RANK_NOT_AVAILABLE
    first = await store.place_local("A1", "p1", None, T0, rank=1)
    second = await store.place_local("A1", "p2", None, T0)
    assert (first.rank, second.rank) == (1, 2)
    lot = await store.load("A1")
    assert lot is not None and lot.config == "two_options" and lot.status == "OPTION"


@pytest.mark.parametrize(
    ("setup", "expected", "koban"),
    [
        ("blocked", ErrorCode.LOT_NOT_AVAILABLE, "02"),
        ("reserved", ErrorCode.LOT_NOT_AVAILABLE, "02"),
        ("sold", ErrorCode.LOT_NOT_AVAILABLE, "02"),
        ("prereserved", ErrorCode.LOT_PRERESERVED, "04"),
        ("full", ErrorCode.LOT_FULL, "05"),
        ("holds", ErrorCode.PROSPECT_ALREADY_HOLDS, None),
        ("limit", ErrorCode.PROSPECT_OPTION_LIMIT, "01"),
    ],
)
async def test_each_placement_refusal(
    store: LotStore, setup: str, expected: ErrorCode, koban: str | None
) -> None:
    await lots(store, "A1", "B1", "B2", "B3")
    if setup in ("blocked", "reserved", "sold"):
        await store.sync_status("A1", setup, setup.upper(), T0)
    elif setup == "prereserved":
        await store.prereserve("A1", "other", None, 100_000_00, 5_000_00, T0)
    elif setup == "full":
        await store.place_local("A1", "x1", None, T0)
        await store.place_local("A1", "x2", None, T0)
    elif setup == "holds":
        await store.place_local("A1", "p1", None, T0)
    elif setup == "limit":
        for code in ("B1", "B2", "B3"):
            await store.place_local(code, "p1", None, T0)
    before = await store.redis.xlen(store.keys.events)
    with pytest.raises(RuleViolation) as e:
        await store.place_local("A1", "p1", None, T0)
    assert code_of(e) is expected
    assert e.value.koban_code == koban
    assert await store.redis.xlen(store.keys.events) == before  # nothing written


async def test_user_limit(redis: Redis, tenant: str) -> None:
    store = LotStore(redis, tenant, make_rules(max_options_per_user=2))
    await lots(store, "A1", "A2", "A3")
    await store.place_local("A1", "p1", None, T0)
    await store.place_local("A2", "p2", None, T0)
    with pytest.raises(RuleViolation) as e:
        await store.place_local("A3", "p3", None, T0)
    assert code_of(e) is ErrorCode.USER_OPTION_LIMIT
    assert e.value.koban_code == "03"


async def test_precedence_full_before_holder_and_limits(store: LotStore) -> None:
    await lots(store, "A1", "B1", "B2", "B3")
    for code in ("B1", "B2"):
        await store.place_local(code, "p1", None, T0)
    await store.place_local("A1", "p1", None, T0)  # p1 now at its limit of 3, and holds A1
    await store.place_local("A1", "p2", None, T0)
    with pytest.raises(RuleViolation) as e:  # full wins over "already holds" and "limit"
        await store.place_local("A1", "p1", None, T0)
    assert code_of(e) is ErrorCode.LOT_FULL
    await store.cancel("A1", 2, T0)
    with pytest.raises(RuleViolation) as e:  # holds wins over limit
        await store.place_local("A1", "p1", None, T0)
    assert code_of(e) is ErrorCode.PROSPECT_ALREADY_HOLDS
    await store.prereserve("A1", "p9", None, 1, 1, T0)
    with pytest.raises(RuleViolation) as e:  # PRERESV wins over everything after it
        await store.place_local("A1", "p1", None, T0)
    assert code_of(e) is ErrorCode.LOT_PRERESERVED


async def test_prospect_limit_across_lots_frees_on_cancel(store: LotStore) -> None:
    await lots(store, "A1", "A2", "A3", "A4")
    for code in ("A1", "A2", "A3"):
        await store.place_local(code, "p1", None, T0)
    with pytest.raises(RuleViolation) as e:
        await store.place_local("A4", "p1", None, T0)
    assert code_of(e) is ErrorCode.PROSPECT_OPTION_LIMIT
    assert (await store.counts("p1")).prospect == 3
    await store.cancel("A2", 1, T0, holder="p1")
    assert (await store.place_local("A4", "p1", None, T0)).rank == 1


async def test_pending_intents_reserve_ranks_and_allowance(store: LotStore) -> None:
    await lots(store, "A1")
    i1 = await store.reserve_placement("A1", "p1", None, T0)
    i2 = await store.reserve_placement("A1", "p2", None, T0)
    assert (i1.rank, i2.rank) == (1, 2)
    with pytest.raises(RuleViolation) as e:
        await store.reserve_placement("A1", "p3", None, T0)
    assert code_of(e) is ErrorCode.LOT_FULL
    assert (await store.counts("p1")).prospect == 1
    # Koban refused rank 1: its reservation is dropped and rank 2's intent moves up.
    assert await store.release_intent("A1", i1.id, T0)
    lot = await store.load("A1")
    assert lot is not None and [(i.holder, i.rank) for i in lot.intents] == [("p2", 1)]
    assert (await store.counts("p1")).prospect == 0
    option = await store.confirm_placement("A1", i2.id, T0)
    assert option.rank == 1 and option.holder == "p2" and option.via_api
    assert await types(store) == ["koban.lot.imported", "koban.option.placed"]


async def test_a_change_decided_on_a_known_value_lands_only_if_it_is_current(
    store: LotStore,
) -> None:
    """`mutate(known=...)`: decided on the value the caller read, without reading again;
    a stale value (the lot changed since) is never what gets written, nor what a refusal
    or a no-op is judged on: the change is decided again on the lot as it is."""
    await lots(store, "A1")
    i1 = await store.reserve_placement("A1", "p1", None, T0)
    current = await store.load_raw("A1")
    assert current is not None
    seen: list[list[str]] = []

    def confirm(iid: str) -> ChangeFn[str]:
        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], str]:
            seen.append([i.id for i in lot.intents])
            return tr.confirm_placement(lot, iid, f"o-{iid}", T0, store.rules), iid

        return change

    # Current: one decision, and it lands.
    assert await store.mutate("A1", confirm(i1.id), now=T0, known=current) == i1.id
    assert seen == [[i1.id]]
    # Stale (written before the confirmation): refused by revision, decided on the lot.
    i2 = await store.reserve_placement("A1", "p2", None, T0)
    seen.clear()
    assert await store.mutate("A1", confirm(i2.id), now=T0, known=current) == i2.id
    assert seen == [[i1.id], [i2.id]]  # the stale view, then the lot as it is
    lot = await store.load("A1")
    assert lot is not None and sorted(o.holder or "" for o in lot.options) == ["p1", "p2"]
    # A refusal on a stale value is not the answer: the intent is there now.
    i3_lot = "A2"
    await lots(store, i3_lot)
    before = await store.load_raw(i3_lot)
    assert before is not None
    i3 = await store.reserve_placement(i3_lot, "p3", None, T0)
    seen.clear()
    assert await store.mutate(i3_lot, confirm(i3.id), now=T0, known=before) == i3.id
    assert seen == [[], [i3.id]]  # raised on the stale value (no intent), then landed
    # Nothing to write on a stale value: read, then decided again.
    noop_calls: list[int] = []

    def noop(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], int]:
        noop_calls.append(lot.version)
        return [], lot.version

    version = await store.mutate(i3_lot, noop, now=T0, known=before)
    assert noop_calls == [1, version] and version > 1
    placed = [e for e in await stream(store) if e["type"] == "koban.option.placed"]
    assert len(placed) == 3


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


# --- préréservation, reservation, désistement -------------------------------------------


async def test_prereservation_converts_own_option_and_keeps_others(store: LotStore) -> None:
    await lots(store, "A1")
    await store.place_local("A1", "p1", None, T0)
    await store.place_local("A1", "p2", None, T0)
    await store.prereserve("A1", "p1", "part", 250_000_00, 10_000_00, T0)
    lot = await store.load("A1")
    assert lot is not None and lot.config == "prereserved" and lot.status == "PRERESV"
    assert [(o.rank, o.holder) for o in lot.options] == [(1, "p2")]
    assert (await types(store))[-3:] == [
        "koban.option.converted",
        "koban.option.promoted",
        "koban.lot.prereserved",
    ]
    assert (await store.counts("p1")).prospect == 0
    assert (await store.counts("p2")).prospect == 1
    # the remaining option is ordinary: it can be prolonged and expires on its tick
    await store.prolong("A1", 1, T0 + 3 * 86400, T0)
    assert (await sweep_expiries(store, T0 + 3 * 86400)).expired == 1
    lot = await store.load("A1")
    assert lot is not None and lot.config == "prereserved" and not lot.options


@pytest.mark.parametrize(("keep_option", "back_to"), [(True, "OPTION"), (False, "LIBRE")])
async def test_withdrawal_back_to_option_or_free(
    store: LotStore, keep_option: bool, back_to: str
) -> None:
    await lots(store, "A1")
    if keep_option:
        await store.place_local("A1", "p2", None, T0)
    await store.prereserve("A1", "p1", None, 1, 1, T0)
    with pytest.raises(RuleViolation) as e:
        await store.withdraw("A1", "p2", T0)
    assert code_of(e) is ErrorCode.PRERESERVATION_HOLDER_MISMATCH
    lot = await store.withdraw("A1", "p1", T0)
    assert lot.status == back_to
    with pytest.raises(RuleViolation) as e:
        await store.withdraw("A1", "p1", T0)
    assert code_of(e) is ErrorCode.NOT_PRERESERVED


async def test_reservation_supersedes_remaining_options(store: LotStore) -> None:
    await lots(store, "A1")
    await store.place_local("A1", "p1", None, T0)
    await store.place_local("A1", "p2", None, T0)
    await store.prereserve("A1", "p1", None, 1, 1, T0)
    drift = await store.validate_reservation("A1", T0)
    assert drift is False
    lot = await store.load("A1")
    assert lot is not None and lot.status == "RESV" and not lot.options
    assert (await types(store))[-2:] == ["koban.option.superseded", "koban.lot.reserved"]
    assert await store.redis.zcard(store.keys.expiries) == 0
    assert (await store.counts("p2")).prospect == 0
    # withdrawal from RESV goes back to LIBRE: the options were superseded
    assert (await store.withdraw("A1", "p1", T0)).status == "LIBRE"


async def test_reservation_from_free_records_drift(store: LotStore) -> None:
    await lots(store, "A1")
    assert await store.validate_reservation("A1", T0) is True


# --- concurrency ----------------------------------------------------------------------


async def test_fifty_concurrent_reservations_on_one_lot(store: LotStore) -> None:
    await lots(store, "A1")

    async def attempt(i: int) -> int | ErrorCode:
        try:
            return (await store.reserve_placement("A1", f"p{i}", None, T0)).rank
        except RuleViolation as e:
            return e.code

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2]
    assert results.count(ErrorCode.LOT_FULL) == 48


async def test_one_prospect_on_ten_lots_concurrently(store: LotStore) -> None:
    codes = [f"L{i}" for i in range(10)]
    await lots(store, *codes)

    async def attempt(code: str) -> bool | ErrorCode:
        try:
            await store.reserve_placement(code, "p1", None, T0)
            return True
        except RuleViolation as e:
            return e.code

    results = await asyncio.gather(*(attempt(c) for c in codes))
    assert results.count(True) == 3
    assert results.count(ErrorCode.PROSPECT_OPTION_LIMIT) == 7
    assert (await store.counts("p1")).prospect == 3


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
