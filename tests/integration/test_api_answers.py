"""Remembered availability answers (`service.entrypoints.api.answers`): a remembered body is exactly
what judging the stored lot afresh gives, at every instant it is served — ticks, rank 2
promotions, a clock moved back — and any change to the stored value, the count or the
rules is judged afresh. Over HTTP: the route serves from the memo, and an option expires
to the second at its tick though its answer was remembered a second before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from service.entrypoints.api import lot_availability
from service.entrypoints.api.answers import AvailabilityAnswers
from service.entrypoints.api.routes_lots import ANSWERS, local_availability, remembered_body
from statecharts.model import Rules
from statecharts.ticks import ceil_tick
from tests.support.api_harness import DAY, T0, Api, running_api
from tests.support.rules import make_rules
from tests.support.stored_lots import TICK, stored

RULES = make_rules()
RULE_SETS = [
    RULES,
    replace(RULES, max_options_per_user=2),
    replace(RULES, rank2_clock="restart"),
    replace(RULES, max_options_per_user=1, rank2_clock="restart"),
]
# Around the ticks the generated options expire at: before, on and after each.
INSTANTS = [TICK + k * 1800 + d for k in range(-2, 4) for d in (-1, 0, 1, 900)]


def fresh(raw: bytes, rules: Rules, now: int, user: int) -> bytes:
    return orjson.dumps(local_availability("A-1", raw, rules, now, None, 0, user)[1])


def served(memo: AvailabilityAnswers, raw: bytes, rules: Rules, now: int, user: int) -> bytes:
    """What the route answers (`remembered_body`)."""
    return remembered_body(memo, "t", "A-1", raw, rules, now, user)


@settings(max_examples=400, deadline=None)
@given(
    raw=stored(),
    rules=st.sampled_from(RULE_SETS),
    user=st.integers(0, 3),
    instants=st.lists(st.sampled_from(INSTANTS), min_size=1, max_size=12),
)
def test_a_remembered_answer_is_the_fresh_one_at_every_instant(
    raw: bytes, rules: Rules, user: int, instants: list[int]
) -> None:
    memo = AvailabilityAnswers()
    for now in instants:  # in any order: the clock may also go back
        assert served(memo, raw, rules, now, user) == fresh(raw, rules, now, user), now


def test_answers_are_reused_within_their_validity_and_only_there() -> None:
    raw = b'1|{"c":"one_option","v":2,"q":2,"o":[["o1",1,"p1",null,%d,%d,%d,0,0,%d,1,0]],"m":0}' % (
        TICK - DAY,
        TICK + 1700,
        TICK + 1800,
        TICK + 1700,
    )
    memo = AvailabilityAnswers()
    first = served(memo, raw, RULES, TICK, 0)
    assert memo.get("t", "A-1", raw, 0, RULES, TICK + 1799) == first  # reused up to the tick
    assert memo.get("t", "A-1", raw, 0, RULES, TICK + 1800) is None  # the option's tick
    assert memo.get("t", "A-1", raw, 0, RULES, TICK - 1) is None  # before it was judged
    assert memo.get("t", "A-1", raw, 1, RULES, TICK) is None  # another count
    assert memo.get("t", "A-1", raw, 0, replace(RULES), TICK) is None  # other rules
    assert memo.get("t", "A-1", raw.replace(b'"v":2', b'"v":3'), 0, RULES, TICK) is None
    assert memo.get("u", "A-1", raw, 0, RULES, TICK) is None  # another tenant
    expired = served(memo, raw, RULES, TICK + 1800, 0)
    assert orjson.loads(expired)["result"] == 0 and orjson.loads(first)["result"] == 1
    free = raw.replace(b'"c":"one_option"', b'"c":"free"').split(b',"o":')[0] + b',"m":0}'
    body = served(memo, free, RULES, TICK, 0)
    assert memo.get("t", "A-1", free, 0, RULES, TICK + 10 * 365 * DAY) == body  # no expiry


def test_past_its_limit_the_memo_starts_again() -> None:
    memo = AvailabilityAnswers(limit=3)
    for n in range(3):
        memo.put("t", f"L{n}", b"v", 0, RULES, TICK, None, b"{}")
    memo.put("t", "L0", b"w", 0, RULES, TICK, None, b"{}")  # a lot already held: replaced
    assert len(memo) == 3 and memo.get("t", "L0", b"w", 0, RULES, TICK) == b"{}"
    memo.put("u", "L3", b"v", 0, RULES, TICK, None, b"[]")
    assert len(memo) == 1
    assert memo.get("t", "L1", b"v", 0, RULES, TICK) is None
    assert memo.get("u", "L3", b"v", 0, RULES, TICK) == b"[]"


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def availability(api: Api, lot: str, query: str = "") -> dict[str, Any]:
    answer = await api.get(f"lots/{lot}/availability{query}", token="read")
    assert answer.status == 200
    return dict(answer.body)


async def test_the_route_serves_remembered_answers_and_expires_to_the_second(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await api.place("L1", "p1")).status == 201
    expiry = ceil_tick(T0 + 2 * DAY)
    judged: list[int] = []
    real = lot_availability.local_availability

    def counting(*args: Any) -> Any:
        judged.append(args[3])
        return real(*args)

    monkeypatch.setattr(lot_availability, "local_availability", counting)
    api.clock.set(expiry - 1)
    held = await availability(api, "L1")
    assert (held["result"], held["nextRank"]) == (1, 2)
    assert await availability(api, "L1") == held  # remembered: not judged again
    assert judged == [expiry - 1]
    assert len(api.client.server.app[ANSWERS]) == 1
    api.clock.set(expiry)  # the tick: the option is due, lazily expired by the read
    expired = await availability(api, "L1")
    assert (expired["result"], expired["canPlace"], expired["endDate"]) == (0, True, None)
    api.clock.set(expiry + 1)
    assert await availability(api, "L1") == expired
    assert judged == [expiry - 1, expiry]
    # A prospect's answer, or Koban's, is judged every time.
    await availability(api, "L1", "?thirdGuid=p1")
    await availability(api, "L1", "?thirdGuid=p1")
    assert judged[2:] == [expiry + 1, expiry + 1]


async def test_a_write_is_seen_by_the_next_read(api: Api) -> None:
    free = await availability(api, "L1")
    assert (free["result"], free["nextRank"]) == (0, 1)
    assert (await api.place("L1", "p1")).status == 201
    assert (await availability(api, "L1"))["result"] == 1
    # A write by another process (straight to the store: not through this app).
    await api.store.sync_status("L1", "blocked", "BLOQUE", T0 + 60)
    blocked = await availability(api, "L1")
    assert (blocked["result"], blocked["status"]) == (-4, "BLOQUE")
