"""Random sequences of business events and clock jumps against the real store.

After every step the invariants of the core are read back from Redis and checked: at most
two options, ranks dense from 1, counts equal what the lots hold, the expiry and intent
indexes equal the lots, and lot versions and events match one for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from redis.asyncio import Redis

from service.keys import API_USER_FIELD, prospect_field
from service.store import LotStore
from service.sweep import expire_due
from statecharts.errors import RuleViolation
from statecharts.model import Lot
from statecharts.ticks import latest_tick
from statecharts.transitions import occupancy_invariant
from tests.conftest import delete_tenant_keys, make_rules

LOTS = ["A", "B", "C"]
PROSPECTS = ["p1", "p2", "p3", "p4"]
T0 = 1_795_000_000 - 1_795_000_000 % 1800
STEPS = int(os.environ.get("KOBAN_PROPERTY_STEPS", "40"))
EXAMPLES = int(os.environ.get("KOBAN_PROPERTY_EXAMPLES", "25"))


class StoreMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tenant = "h" + uuid.uuid4().hex[:12]
        self.redis = Redis.from_url(self.redis_url)
        clock = "restart" if uuid.uuid4().int % 2 else "own"
        self.store = LotStore(
            self.redis,
            self.tenant,
            make_rules(rank2_clock=clock, max_options_per_user=5),
            history_cap=10_000,
        )
        self.now = T0
        self.intents: list[tuple[str, str]] = []
        for code in LOTS:
            self.run(self.store.import_lot(code, self.now))

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def attempt(self, coro) -> None:  # type: ignore[no-untyped-def]
        # a refusal is a legitimate outcome; the invariants check it wrote nothing
        with contextlib.suppress(RuleViolation):
            self.run(coro)

    @rule(code=st.sampled_from(LOTS), who=st.sampled_from(PROSPECTS))
    def place(self, code: str, who: str) -> None:
        self.attempt(self.store.place_local(code, who, None, self.now))

    @rule(code=st.sampled_from(LOTS), who=st.sampled_from(PROSPECTS))
    def reserve(self, code: str, who: str) -> None:
        try:
            intent = self.run(self.store.reserve_placement(code, who, None, self.now))
            self.intents.append((code, intent.id))
        except RuleViolation:
            pass

    @rule(data=st.data(), confirm=st.booleans())
    def resolve_intent(self, data: st.DataObject, confirm: bool) -> None:
        if not self.intents:
            return
        code, iid = self.intents.pop(data.draw(st.integers(0, len(self.intents) - 1)))
        if confirm:
            self.attempt(self.store.confirm_placement(code, iid, self.now))
        else:
            self.run(self.store.release_intent(code, iid, self.now))

    @rule(code=st.sampled_from(LOTS), rank=st.sampled_from([1, 2]))
    def cancel(self, code: str, rank: int) -> None:
        self.attempt(self.store.cancel(code, rank, self.now))

    @rule(code=st.sampled_from(LOTS), rank=st.sampled_from([1, 2]), hours=st.integers(0, 120))
    def prolong(self, code: str, rank: int, hours: int) -> None:
        self.attempt(self.store.prolong(code, rank, self.now + hours * 3600, self.now))

    @rule(code=st.sampled_from(LOTS), who=st.sampled_from(PROSPECTS))
    def prereserve(self, code: str, who: str) -> None:
        self.attempt(self.store.prereserve(code, who, None, 100, 10, self.now))

    @rule(code=st.sampled_from(LOTS))
    def validate(self, code: str) -> None:
        self.attempt(self.store.validate_reservation(code, self.now))

    @rule(code=st.sampled_from(LOTS), who=st.sampled_from([*PROSPECTS, None]))
    def withdraw(self, code: str, who: str | None) -> None:
        self.attempt(self.store.withdraw(code, who, self.now))

    @rule(
        code=st.sampled_from(LOTS),
        status=st.sampled_from(["free", "one_option", "blocked", "sold", "custom", "reserved"]),
    )
    def sync(self, code: str, status: str) -> None:
        self.attempt(self.store.sync_status(code, status, "X-" + status, self.now))

    @rule(minutes=st.integers(1, 60 * 72))
    def advance(self, minutes: int) -> None:
        self.now += minutes * 60

    @rule()
    def sweep(self) -> None:
        self.run(expire_due(self.store, latest_tick(self.now), batch=2))

    @invariant()
    def sound(self) -> None:
        self.run(self.check())

    async def check(self) -> None:
        store, keys = self.store, self.store.keys
        counts: Counter[str] = Counter()
        expiries: dict[bytes, float] = {}
        intents: set[bytes] = set()
        for code in LOTS:
            lot = await store.load(code)
            assert lot is not None
            assert occupancy_invariant(lot) == [], (code, occupancy_invariant(lot))
            for o in lot.options:
                if o.holder:
                    counts[prospect_field(o.holder)] += 1
                if o.via_api:
                    counts[API_USER_FIELD] += 1
                if o.expiry is not None:
                    expiries[f"{code}/{o.id}".encode()] = float(o.expiry)
            for i in lot.intents:
                counts[prospect_field(i.holder)] += 1
                counts[API_USER_FIELD] += 1
                intents.add(f"{code}/{i.id}".encode())
            await self.check_events(lot)
        stored = {k.decode(): int(v) for k, v in (await store.redis.hgetall(keys.counts)).items()}
        assert stored == dict(counts)
        assert dict(await store.redis.zrange(keys.expiries, 0, -1, withscores=True)) == expiries
        assert set(await store.redis.zrange(keys.intents, 0, -1)) == intents
        # held per prospect never exceeds the limit through the API paths
        assert all(v <= 3 for k, v in counts.items() if k.startswith("p:"))

    async def check_events(self, lot: Lot) -> None:
        history = await self.store.history(lot.extcode)
        assert len(history) == lot.sequence
        assert [int(e["sequence"]) for e in history] == list(range(1, lot.sequence + 1))
        # every version bump has at least one event carrying it, and no event without it
        assert sorted({e["lotversion"] for e in history}) == list(range(1, lot.version + 1))

    def teardown(self) -> None:
        self.run(self.stream_matches_histories())
        self.run(self.redis.aclose())
        self.loop.close()
        delete_tenant_keys(self.redis_url, self.tenant)

    async def stream_matches_histories(self) -> None:
        entries = await self.redis.xrange(self.store.keys.events)
        by_lot: dict[str, list[bytes]] = {}
        for _, fields in entries:
            subject = orjson.loads(fields[b"ce"])["subject"]
            by_lot.setdefault(subject, []).append(fields[b"ce"])
        for code in LOTS:
            history = await self.store.history(code)
            assert [orjson.loads(e) for e in by_lot.get(code, [])] == history


@pytest.mark.slow
def test_store_invariants_under_random_operations(redis_url: str) -> None:
    StoreMachine.redis_url = redis_url
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
