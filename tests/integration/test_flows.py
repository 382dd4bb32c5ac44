"""Outbound flows through Koban against a scripted Koban and a real redis-server:
reserve → GetLotStatus → Add → confirm, refusals with their source, drift, unknown outcomes,
options addressed by rank."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.clock import FixedClock
from service.koban import KobanError, KobanUnavailable
from service.storage.redis_mux import MuxReader
from service.usecases.flows import KobanRefusal, OptionFlows, Pending, Placed
from statecharts.errors import ErrorCode, RuleViolation
from tests.support.flows_env import (
    T0,
    Env,
    make_client,
    make_tenant,
    one_option,
    refused,
)
from tests.support.instants import ts
from tests.support.koban_scripted import (
    ADD,
    DESIST,
    FREE,
    HANG,
    LOT_STATUS,
    OK,
    PRERESV,
    PROLONG,
    UNDO,
    Reply,
    ScriptedKoban,
)


@pytest.fixture(params=["redis-py", "mux"])
async def env(request: pytest.FixtureRequest, redis: Redis, tenant: str) -> AsyncIterator[Env]:
    """Flows whose store goes through redis-py, or through the shared connection
    `koban-options api` installs (`LotStore.fast`)."""
    clock = FixedClock(T0)
    t = make_tenant(redis, tenant, clock)
    if request.param == "mux":
        t.store.fast = MuxReader.for_client(redis)
    try:
        async with ScriptedKoban() as server, aiohttp.ClientSession() as session:
            koban = make_client(session, server.base_url)
            yield Env(t, clock, server, koban, OptionFlows(t, koban, poll_s=0.01))
    finally:
        if t.store.fast is not None:
            await t.store.fast.aclose()


async def lot(env: Env, code: str = "A1") -> str:
    await env.store.import_lot(code, T0, program="P1")
    return code


# --- placement ----------------------------------------------------------------------------


async def test_placement_calls_get_lot_status_before_every_add(env: Env) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, FREE, one_option())
    env.server.script("POST", ADD, OK)
    first = await env.flows.place("A1", "p1", partner="cgp1")
    env.clock.advance(60)
    second = await env.flows.place("A1", "p2")
    assert isinstance(first, Placed) and isinstance(second, Placed)
    assert (first.option.rank, second.option.rank) == (1, 2)
    assert env.paths() == [LOT_STATUS, ADD, LOT_STATUS, ADD]
    adds = env.server.requests(ADD)
    assert adds[0].body == {
        "Third": {"Guid": "p1"},
        "Deal": {"Extcode": "A1"},
        "DateOption": T0,
        "Rank": 1,
        "Part": {"Guid": "cgp1"},
    }
    assert adds[1].body["Rank"] == 2 and adds[1].body["DateOption"] == T0 + 60
    assert env.server.requests(LOT_STATUS)[0].query == {"extcode": "A1"}
    stored = await env.store.load("A1")
    assert stored is not None and stored.config == "two_options" and not stored.intents
    assert first.option.placed_at == T0 and first.option.source == "estimated"
    placed = [e for e in await env.events() if e["type"] == "koban.option.placed"]
    assert [e["data"]["deadlineSource"] for e in placed] == ["estimated", "estimated"]
    assert await env.count("p1") == 1


async def test_local_refusal_sends_nothing(env: Env) -> None:
    with pytest.raises(RuleViolation) as e:
        await env.flows.place("NOPE", "p1")
    assert e.value.code is ErrorCode.LOT_UNKNOWN and not isinstance(e.value, KobanRefusal)
    assert env.server.seen == []


@pytest.mark.parametrize(
    ("code", "expected", "drift"),
    [
        ("01", ErrorCode.PROSPECT_OPTION_LIMIT, False),
        ("02", ErrorCode.LOT_NOT_AVAILABLE, True),
        ("03", ErrorCode.USER_OPTION_LIMIT, False),
        ("04", ErrorCode.LOT_PRERESERVED, True),
        ("05", ErrorCode.LOT_FULL, True),
        (5, ErrorCode.LOT_FULL, True),
        ("99", ErrorCode.LOT_NOT_AVAILABLE, True),
    ],
)
async def test_add_refusal_is_mapped_and_changes_nothing(
    env: Env, code: str | int, expected: ErrorCode, drift: bool
) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script(
        "POST", ADD, Reply(json={"success": False, "errorcode": code, "message": "nope"})
    )
    before = await env.store.load("A1")
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p1")
    refusal = e.value
    assert refusal.code is expected and refusal.source == "koban"
    assert refusal.koban_code == (f"{int(code):02d}")
    assert refusal.http_status == 409 and refusal.drift is drift
    after = await env.store.load("A1")
    assert after is not None and before is not None
    assert (after.config, after.options, after.intents) == ("free", [], [])
    assert await env.count("p1") == 0
    assert await env.store.redis.zcard(env.store.keys.intents) == 0
    kinds = await env.types()
    assert kinds.count("koban.sync.drift_detected") == int(drift)
    assert "koban.option.placed" not in kinds
    assert (await env.needs_sync() == {"A1"}) is drift


async def test_an_undocumented_409_to_add_releases_the_intent_and_queues_the_lot(
    env: Env,
) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script("POST", ADD, Reply(status=409, json={"success": False, "message": "?"}))
    with pytest.raises(KobanError) as e:
        await env.flows.place("A1", "p1")
    assert e.value.status == 409  # answered 502 KOBAN_ERROR by the API
    stored = await env.store.load("A1")
    assert stored is not None and not stored.intents and not stored.options
    assert await env.count("p1") == 0
    assert await env.needs_sync() == {"A1"}  # Koban saw the lot otherwise: re-read it


async def test_drift_on_05_with_one_local_option(env: Env) -> None:
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    env.server.script("GET", LOT_STATUS, one_option())
    env.server.script("POST", ADD, refused("05"))
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p2")
    assert e.value.code is ErrorCode.LOT_FULL and e.value.koban_code == "05"
    drift = [e for e in await env.events() if e["type"] == "koban.sync.drift_detected"]
    assert len(drift) == 1
    data = drift[0]["data"]
    assert data["kobanCode"] == "05" and data["localOptions"] == 1 and data["actor"] == "api"
    assert await env.needs_sync() == {"A1"}
    stored = await env.store.load("A1")
    assert stored is not None and len(stored.options) == 1 and not stored.intents


async def test_lot_status_showing_koban_full_refuses_before_add(env: Env) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, Reply(json={"Result": -3, "MaxRank": 2}))
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p1")
    assert e.value.code is ErrorCode.LOT_FULL and e.value.source == "koban"
    assert e.value.koban_code == "05" and e.value.drift
    assert env.paths() == [LOT_STATUS]  # no Add
    stored = await env.store.load("A1")
    assert stored is not None and not stored.intents
    assert await env.types() == ["koban.lot.imported", "koban.sync.drift_detected"]
    assert await env.needs_sync() == {"A1"}


async def test_lot_status_prereserved_and_unknown(env: Env) -> None:
    await lot(env, "A1")
    await lot(env, "A2")
    env.server.script("GET", LOT_STATUS, Reply(json={"Result": -2}), Reply(json={"Result": -1}))
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p1")
    assert e.value.code is ErrorCode.LOT_PRERESERVED and e.value.koban_code == "04"
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A2", "p1")
    assert e.value.code is ErrorCode.LOT_UNKNOWN
    assert ADD not in env.paths()
    assert await env.count("p1") == 0


async def test_koban_with_an_unknown_option_refuses_rank_one(env: Env) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, one_option(T0 + 3600))
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p1")
    assert e.value.code is ErrorCode.RANK_NOT_AVAILABLE and e.value.drift
    assert ADD not in env.paths()


async def test_koban_expiry_lag_after_a_tick_is_not_drift(env: Env) -> None:
    await lot(env)
    tick = ts("2026-11-23T11:00:00Z")
    env.clock.set(tick + 60)  # within the 5 min drift tolerance
    env.server.script("GET", LOT_STATUS, one_option(tick))
    with pytest.raises(KobanRefusal) as e:
        await env.flows.place("A1", "p1")
    assert e.value.code is ErrorCode.RANK_NOT_AVAILABLE and not e.value.drift
    assert "koban.sync.drift_detected" not in await env.types()


async def test_outcome_unknown_keeps_the_intent_pending(env: Env) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script("POST", ADD, HANG)
    result = await env.flows.place("A1", "p1", intent_id="I1")
    assert result == Pending("A1", "I1", 1, "p1")
    stored = await env.store.load("A1")
    assert stored is not None
    # What Koban's pre-check (option-check webhook) needs: the rank held by the intent.
    assert [(i.id, i.rank, i.holder) for i in stored.intents] == [("I1", 1, "p1")]
    assert stored.config == "free" and not stored.options
    assert await env.store.redis.zscore(env.store.keys.intents, "A1/I1") == T0
    assert await env.count("p1") == 1  # counts toward the prospect's limit
    # The same prospect cannot place again on that lot while it is pending.
    with pytest.raises(RuleViolation) as e:
        await env.flows.place("A1", "p1")
    assert e.value.code is ErrorCode.PROSPECT_ALREADY_HOLDS
    assert "koban.option.placed" not in await env.types()


async def test_unavailable_before_sending_releases_the_intent(env: Env) -> None:
    await lot(env)
    env.server.script("GET", LOT_STATUS, Reply(status=503))
    with pytest.raises(KobanUnavailable):
        await env.flows.place("A1", "p1")
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script("POST", ADD, Reply(status=429))  # rate limited: nothing applied
    with pytest.raises(KobanUnavailable):
        await env.flows.place("A1", "p1")
    stored = await env.store.load("A1")
    assert stored is not None and not stored.intents and not stored.options
    assert await env.count("p1") == 0


async def test_koban_first_answer_is_judged_on_the_reserved_value_without_a_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await lot(env)
    reads: list[str] = []
    read_with_raw = env.store.read_with_raw

    async def counted(extcode: str, now: int) -> Any:
        reads.append(extcode)
        return await read_with_raw(extcode, now)

    monkeypatch.setattr(env.store, "read_with_raw", counted)
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script("POST", ADD, OK)
    placed = await env.flows.place("A1", "p1")
    assert isinstance(placed, Placed) and placed.option.rank == 1
    assert reads == [] and env.paths() == [LOT_STATUS, ADD]


async def test_a_lot_changed_while_koban_answers_is_decided_again_on_a_fresh_read(
    env: Env,
) -> None:
    """Another prospect reserves rank 2 while GetLotStatus is in flight: our placement is
    judged on the value our reservation wrote, its confirmation's revision check sees the
    change and decides again on the lot as it is now."""
    await lot(env)
    others: list[Any] = []

    async def status_after_another_reservation(_seen: Any) -> Reply:
        others.append(await env.store.reserve_placement("A1", "p2", None, T0, intent_id="R2"))
        return FREE

    env.server.script("GET", LOT_STATUS, status_after_another_reservation)
    env.server.script("POST", ADD, OK)
    placed = await env.flows.place("A1", "p1")
    assert isinstance(placed, Placed) and placed.option.rank == 1
    stored = await env.store.load("A1")
    assert stored is not None and [o.holder for o in stored.options] == ["p1"]
    assert [(i.id, i.rank, i.holder) for i in stored.intents] == [("R2", 2, "p2")]
    assert (await env.count("p1"), await env.count("p2")) == (1, 1)


async def test_an_intent_released_while_koban_answers_is_placed_and_recorded(env: Env) -> None:
    """An operator releases our intent while GetLotStatus is in flight: the Add still goes
    out (judged on the reserved value) and Koban's placement is recorded (Koban is the
    authority), as when the release lands while the Add is in flight."""
    await lot(env)

    async def status_after_release(_seen: Any) -> Reply:
        stored = await env.store.load("A1")
        assert stored is not None and len(stored.intents) == 1
        await env.store.release_intent("A1", stored.intents[0].id, T0)
        return FREE

    env.server.script("GET", LOT_STATUS, status_after_release)
    env.server.script("POST", ADD, OK)
    placed = await env.flows.place("A1", "p1")
    assert isinstance(placed, Placed) and placed.option.rank == 1
    assert env.paths() == [LOT_STATUS, ADD]
    stored = await env.store.load("A1")
    assert stored is not None and [o.holder for o in stored.options] == ["p1"]
    assert not stored.intents and await env.count("p1") == 1


async def test_rank_two_waits_for_our_rank_one_in_flight(env: Env) -> None:
    """Koban still shows 0 options while our own rank-1 placement is on its way."""
    await lot(env)
    first = await env.store.reserve_placement("A1", "p1", None, T0, intent_id="R1")
    calls = {"n": 0}

    def status(_seen: Any) -> Reply:
        calls["n"] += 1
        return FREE

    env.server.script("GET", LOT_STATUS, status)
    env.flows.predecessor_wait_s = 0.05
    with pytest.raises(RuleViolation) as e:
        await env.flows.place("A1", "p2")
    assert e.value.code is ErrorCode.RANK_NOT_AVAILABLE and not isinstance(e.value, KobanRefusal)
    assert calls["n"] >= 2 and ADD not in env.paths()
    stored = await env.store.load("A1")
    assert stored is not None and [i.id for i in stored.intents] == [first.id]


# --- options addressed by rank --------------------------------------------------------


async def test_option_moved_sends_nothing(env: Env) -> None:
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    for call in (
        env.flows.cancel("A1", 1, third="p2"),
        env.flows.prolong("A1", 1, T0 + 4 * 86400, third="p2"),
    ):
        with pytest.raises(RuleViolation) as e:
            await call
        assert e.value.code is ErrorCode.OPTION_MOVED
    assert env.server.seen == []


async def test_cancel_and_prolong_by_rank(env: Env) -> None:
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    await env.store.place_local("A1", "p2", None, T0)
    env.server.script("POST", PROLONG, OK)
    env.server.script("POST", UNDO, OK)
    until = T0 + 3 * 86400
    prolonged = await env.flows.prolong("A1", 2, until, third="p2")
    assert prolonged.prolonged and prolonged.deadline == until and prolonged.rank == 2
    assert env.server.requests(PROLONG)[0].body == {
        "Deal": {"Extcode": "A1"},
        "Rank": 2,
        "DateProlongation": until,
    }
    cancelled = await env.flows.cancel("A1", 1, third="p1")
    assert cancelled.holder == "p1"
    assert env.server.requests(UNDO)[0].body == {"Deal": {"Extcode": "A1"}, "Rank": 1}
    stored = await env.store.load("A1")
    assert stored is not None and [(o.rank, o.holder) for o in stored.options] == [(1, "p2")]
    kinds = await env.types()
    assert kinds[-3:] == [
        "koban.option.prolonged",
        "koban.option.cancelled",
        "koban.option.promoted",
    ]
    assert "koban.sync.drift_detected" not in kinds


async def test_prolong_local_rule_and_koban_refusal(env: Env) -> None:
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    with pytest.raises(RuleViolation) as e:
        await env.flows.prolong("A1", 1, T0)  # not a later tick
    assert e.value.code is ErrorCode.PROLONGATION_NOT_LATER and env.server.seen == []
    env.server.script("POST", PROLONG, refused("01"))
    with pytest.raises(KobanRefusal) as k:
        await env.flows.prolong("A1", 1, T0 + 4 * 86400)
    assert k.value.code is ErrorCode.OPTION_NOT_FOUND and k.value.koban_code == "01"
    assert await env.needs_sync() == {"A1"}
    stored = await env.store.load("A1")
    assert stored is not None and not stored.options[0].prolonged


async def test_rank_moved_between_check_and_apply(env: Env) -> None:
    """Rank 1 is cancelled by Koban's webhook while our Undo of rank 2 is in flight."""
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    await env.store.place_local("A1", "p2", None, T0)

    def undo(_seen: Any) -> Reply:
        return OK

    env.server.script("POST", UNDO, undo)
    original = env.koban.undo_option

    async def racing_undo(extcode: str, rank: int) -> Any:
        await env.store.cancel("A1", 1, T0, actor="koban")  # p2 promoted to rank 1
        return await original(extcode, rank)

    env.koban.undo_option = racing_undo  # type: ignore[method-assign]
    cancelled = await env.flows.cancel("A1", 2, third="p2")
    assert cancelled.holder == "p2"
    stored = await env.store.load("A1")
    assert stored is not None and stored.options == [] and stored.config == "free"
    drift = [e for e in await env.events() if e["type"] == "koban.sync.drift_detected"]
    assert drift and drift[-1]["data"]["reason"] == "rank_moved_during_call"
    assert await env.needs_sync() == {"A1"}


# --- préréservation -------------------------------------------------------------------


async def test_prereserve_and_withdraw(env: Env) -> None:
    await lot(env)
    await env.store.place_local("A1", "p1", None, T0)
    env.server.script("POST", PRERESV, OK)
    env.server.script("POST", DESIST, refused("02"), OK)
    pre = await env.flows.prereserve("A1", "p1", 25_000_000, 500_000)
    assert pre.config == "prereserved" and pre.options == []
    body = env.server.requests(PRERESV)[0].body
    assert body["PrixVente"] == 250000.0 and body["Garantie"] == 5000.0
    with pytest.raises(RuleViolation) as e:
        await env.flows.withdraw("A1", "p2")  # not the holder: nothing sent
    assert e.value.code is ErrorCode.PRERESERVATION_HOLDER_MISMATCH
    assert env.server.requests(DESIST) == []
    with pytest.raises(KobanRefusal) as k:
        await env.flows.withdraw("A1", "p1")
    assert k.value.code is ErrorCode.PROSPECT_UNKNOWN and not k.value.drift
    withdrawn = await env.flows.withdraw("A1", "p1")
    assert withdrawn.config == "free"
