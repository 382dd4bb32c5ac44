"""The store against a real redis-server: placements and their refusals (in their order),
limits, pending intents, changes decided on a known value, préréservation and reservation,
concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.storage.store import ChangeFn, Counts, LotStore
from service.usecases.sweep import sweep_expiries
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Rules
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
