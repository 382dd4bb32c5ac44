"""Random sequences of business events and clock jumps against the real store.

After every step the invariants of the core are read back from Redis and checked
(tests/support/invariants.py): at most two options, ranks dense from 1, counts equal what the lots
hold, the expiry and intent indexes equal the lots, and lot versions and events match one
for one; at the end of each run the stream matches the histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from service.storage.redis_client import connect
from service.storage.store import LotStore
from service.usecases.sweep import sweep_expiries
from statecharts.errors import RuleViolation
from statecharts.ticks import latest_tick
from tests.support.invariants import check_stream_matches_histories, check_tenant
from tests.support.rules import make_rules
from tests.support.tenant_keys import delete_tenant_keys

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
        self.redis = connect(self.redis_url)
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
        self.run(sweep_expiries(self.store, latest_tick(self.now), batch=2))

    @invariant()
    def sound(self) -> None:
        self.run(self.check())

    async def check(self) -> None:
        await check_tenant(self.store, LOTS, streams=False)

    def teardown(self) -> None:
        self.run(check_stream_matches_histories(self.store, LOTS))
        self.run(self.redis.aclose())
        self.loop.close()
        delete_tenant_keys(self.redis_url, self.tenant)


@pytest.mark.slow
@pytest.mark.cluster
def test_store_invariants_under_random_operations(backend_url: str) -> None:
    StoreMachine.redis_url = backend_url
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
