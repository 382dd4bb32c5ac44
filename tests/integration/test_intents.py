"""Resolution of pending intents (Koban's outcome unknown): by GetLotStatus after the grace
period (placed / not placed), dropped after the TTL with a drift event, by the operator,
and by Koban's option-placed webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.clock import FixedClock
from service.usecases.flows import OptionFlows, Pending, Placed
from service.usecases.intents import (
    confirm_from_webhook,
    list_pending,
    resolve_one,
    resolve_pending,
    webhook_resolution,
)
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.ticks import ceil_tick
from tests.support.flows_env import (
    T0,
    Env,
    make_client,
    make_tenant,
    one_option,
)
from tests.support.koban_scripted import ADD, FREE, HANG, LOT_STATUS, OK, Reply, ScriptedKoban

GRACE = 120
TTL = 900


@pytest.fixture
async def env(redis: Redis, tenant: str) -> AsyncIterator[Env]:
    clock = FixedClock(T0)
    t = make_tenant(redis, tenant, clock)
    async with ScriptedKoban() as server, aiohttp.ClientSession() as session:
        koban = make_client(session, server.base_url)
        yield Env(t, clock, server, koban, OptionFlows(t, koban, poll_s=0.01))


async def pending(env: Env, code: str = "A1", third: str = "p1", iid: str = "I1") -> Pending:
    if await env.store.load(code) is None:
        await env.store.import_lot(code, T0, program="P1")
    env.server.script("GET", LOT_STATUS, FREE)
    env.server.script("POST", ADD, HANG)
    result = await env.flows.place(code, third, intent_id=iid)
    assert isinstance(result, Pending)
    return result


def resolved_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "koban.intent.resolved"]


async def test_nothing_is_resolved_within_the_grace_period(env: Env) -> None:
    await pending(env)
    env.server.seen.clear()
    env.clock.advance(GRACE - 1)
    assert await resolve_pending(env.tenant, env.koban, env.clock.now()) == []
    assert env.server.seen == []
    listed = await list_pending(env.tenant)
    assert [(p.extcode, p.intent_id, p.rank, p.third, p.created_at) for p in listed] == [
        ("A1", "I1", 1, "p1", T0)
    ]


async def test_resolved_as_placed_when_koban_shows_the_rank_occupied(env: Env) -> None:
    await pending(env)
    env.clock.advance(GRACE)
    env.server.script("GET", LOT_STATUS, one_option(T0 + 2 * 86400))
    [resolution] = await resolve_pending(env.tenant, env.koban, env.clock.now())
    assert (resolution.outcome, resolution.rank, resolution.third) == ("placed", 1, "p1")
    stored = await env.store.load("A1")
    assert stored is not None and not stored.intents and stored.config == "one_option"
    option = stored.options[0]
    assert option.holder == "p1" and option.source == "estimated" and option.placed_at == T0
    assert await list_pending(env.tenant) == []
    assert await env.count("p1") == 1
    events = await env.events()
    placed = [e for e in events if e["type"] == "koban.option.placed"]
    [done] = resolved_events(events)
    assert done["data"] == {
        "intentId": "I1",
        "outcome": "placed",
        "rank": 1,
        "thirdGuid": "p1",
        "partnerGuid": None,
        "optionId": option.id,
        "actor": "reconcile",
    }
    # One transition: same lot version for the placement and its resolution.
    assert placed[0]["lotversion"] == done["lotversion"]
    assert placed[0]["data"]["deadlineSource"] == "estimated"


async def test_resolved_as_not_placed_when_the_rank_is_free(env: Env) -> None:
    await pending(env)
    env.clock.advance(GRACE + 5)
    env.server.script("GET", LOT_STATUS, FREE)
    [resolution] = await resolve_pending(env.tenant, env.koban, env.clock.now())
    assert resolution.outcome == "not_placed" and resolution.option is None
    stored = await env.store.load("A1")
    assert stored is not None and stored.config == "free" and not stored.intents
    assert await env.count("p1") == 0
    assert await env.store.redis.zcard(env.store.keys.intents) == 0
    [done] = resolved_events(await env.events())
    assert done["data"]["outcome"] == "not_placed"
    assert "koban.sync.drift_detected" not in await env.types()


async def test_rank_two_intent_behind_a_local_option(env: Env) -> None:
    await env.store.import_lot("A1", T0, program="P1")
    await env.store.place_local("A1", "p0", None, T0)
    env.server.script("GET", LOT_STATUS, one_option())
    env.server.script("POST", ADD, HANG)
    result = await env.flows.place("A1", "p1", intent_id="I2")
    assert isinstance(result, Pending) and result.rank == 2
    env.clock.advance(GRACE)
    env.server.script("GET", LOT_STATUS, one_option())  # Koban still has one: not placed
    [resolution] = await resolve_pending(env.tenant, env.koban, env.clock.now())
    assert (resolution.outcome, resolution.rank) == ("not_placed", 2)
    stored = await env.store.load("A1")
    assert stored is not None and [o.holder for o in stored.options] == ["p0"]


async def test_dropped_after_ttl_when_koban_cannot_answer(env: Env) -> None:
    await pending(env)
    env.server.script("GET", LOT_STATUS, Reply(status=503))
    env.clock.advance(GRACE)
    assert await resolve_pending(env.tenant, env.koban, env.clock.now()) == []
    assert len(await list_pending(env.tenant)) == 1
    env.clock.set(T0 + TTL)
    [resolution] = await resolve_pending(env.tenant, env.koban, env.clock.now())
    assert resolution.outcome == "dropped"
    stored = await env.store.load("A1")
    assert stored is not None and not stored.intents and not stored.options
    assert await env.count("p1") == 0
    events = await env.events()
    drift = [e for e in events if e["type"] == "koban.sync.drift_detected"]
    [done] = resolved_events(events)
    assert drift[0]["data"]["reason"] == "intent_unresolved"
    assert drift[0]["lotversion"] == done["lotversion"]
    assert done["data"]["outcome"] == "dropped" and done["data"]["actor"] == "reconcile"
    assert await env.needs_sync() == {"A1"}


async def test_operator_resolves_one_by_id(env: Env) -> None:
    await pending(env, "A1", "p1", "I1")
    await pending(env, "A2", "p2", "I2")
    env.server.script("GET", LOT_STATUS, one_option())
    resolution = await resolve_one(env.tenant, env.koban, None, "I2", env.clock.now())
    assert (resolution.extcode, resolution.outcome) == ("A2", "placed")
    assert [p.intent_id for p in await list_pending(env.tenant)] == ["I1"]
    with pytest.raises(RuleViolation) as e:
        await resolve_one(env.tenant, env.koban, None, "I2", env.clock.now())
    assert e.value.code is ErrorCode.OPTION_NOT_FOUND


async def test_webhook_confirms_the_pending_intent(env: Env) -> None:
    await pending(env)
    exp = T0 + 2 * 86400 + 900
    env.clock.advance(30)
    resolution = await confirm_from_webhook(env.tenant, "A1", "p1", exp, env.clock.now())
    assert resolution is not None and resolution.outcome == "placed"
    assert resolution.option is not None
    assert resolution.option.source == "koban" and resolution.option.deadline == exp
    assert resolution.option.expiry == ceil_tick(exp)
    [done] = resolved_events(await env.events())
    assert done["data"]["actor"] == "koban"
    # No intent of that third any more: the webhook is handled as a Koban placement.
    assert await confirm_from_webhook(env.tenant, "A1", "p1", exp, env.clock.now()) is None
    stored = await env.store.load("A1")
    assert stored is not None
    assert webhook_resolution(stored, "p9", exp, env.clock.now(), env.tenant.rules) is None


async def test_placement_confirm_after_a_faster_webhook(env: Env) -> None:
    """Koban's option-placed webhook lands before Add's answer: one option, not two."""
    await env.store.import_lot("A1", T0, program="P1")
    env.server.script("GET", LOT_STATUS, FREE)
    original = env.koban.add_option

    async def add_then_webhook(*args: Any, **kwargs: Any) -> Any:
        answer = await original(*args, **kwargs)
        await confirm_from_webhook(env.tenant, "A1", "p1", T0 + 86400, env.clock.now())
        return answer

    env.server.script("POST", ADD, OK)
    env.koban.add_option = add_then_webhook  # type: ignore[method-assign]
    result = await env.flows.place("A1", "p1")
    assert isinstance(result, Placed) and result.option.source == "koban"
    stored = await env.store.load("A1")
    assert stored is not None and len(stored.options) == 1 and not stored.intents
