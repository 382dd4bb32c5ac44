"""The deliverer (docs/subscriptions.md) against real receivers on loopback that verify
every request with `standardwebhooks`: at least once, in order per entity, retries on the tenant's
clock, a receiver down for six hours of clock, a 410, `disable_after`, a killed deliverer,
two deliverers racing for one subscription, and a mixed workload through the API and the
Koban sandbox."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from service.clock import FixedClock
from service.storage.lease import Lease
from service.storage.subscriptions import Subscription
from service.tenancy import Tenant, Tenants
from service.usecases.delivery import GONE_REASON, Deliverer
from service.usecases.subscriptions import create_subscription
from service.usecases.ticking import catch_up
from tests.support.subscriptions import (
    Receiver,
    add_subscriptions,
    events_of,
    serving,
    subs_tenant,
    wait_for,
)

pytestmark = pytest.mark.cluster

T0 = 1_795_000_200  # 2026-11-18T11:10:00Z
LOTS = [f"L{i}" for i in range(1, 9)]


@pytest.fixture
async def shop(redis: Redis, tenant: str) -> AsyncIterator[Tenant]:
    t = subs_tenant(redis, tenant, FixedClock(T0))
    for code in LOTS:
        await t.store.import_lot(code, T0 - 60, program="HAR", label=code)
    yield t


def deliverer(tenant: Tenant, **kw: Any) -> Deliverer:
    values: dict[str, Any] = {"scan_s": 0.05, "poll_s": 0.01}
    values.update(kw)
    return Deliverer(Tenants({tenant.name: tenant}), **values)


async def subscribe(tenant: Tenant, receiver: Receiver, types: list[str] | None = None) -> str:
    sub, secret = await create_subscription(tenant, "r", receiver.url, types or ["*"])
    receiver.secrets = [secret]
    return sub.id


async def workload(tenant: Tenant, rounds: int = 2) -> None:
    """Placements and cancellations over every lot (several events per entity)."""
    store, now = tenant.store, tenant.clock.now()
    for r in range(rounds):
        for i, code in enumerate(LOTS):
            await store.place_local(code, f"p{r}-{i}", None, now)
            if i % 2 == 0 or r < rounds - 1:
                await store.cancel(code, 1, now + 1)


async def stream(tenant: Tenant, types: Callable[[str], bool] = lambda t: True) -> list[Any]:
    """The events committed after the stock was imported (what subscriptions get)."""
    raw = await tenant.store.redis.xrange(tenant.store.keys.events)
    return [e for e in events_of(raw) if types(e["type"]) and e["type"] != "koban.lot.imported"]


def check_order_and_duplicates(
    receiver: Receiver, expected: list[dict[str, Any]], name: str
) -> None:
    """Every event acknowledged; per entity, receipts follow the stream order, each event
    in one contiguous run of attempts with one webhook-id."""
    assert sorted(set(receiver.acked_ids())) == sorted(e["id"] for e in expected)
    order: dict[str, list[str]] = defaultdict(list)
    for e in expected:
        order[e["partitionkey"]].append(e["id"])
    seen: dict[str, list[str]] = defaultdict(list)
    for r in receiver.received:
        assert r.webhook_id == f"{name}:{r.event['id']}"
        runs = seen[r.event["partitionkey"]]
        if not runs or runs[-1] != r.event["id"]:
            runs.append(r.event["id"])
    for entity, ids in order.items():
        assert seen[entity] == ids, entity
    assert receiver.forged == 0


async def drive(
    clock: FixedClock, done: Callable[[], bool], step_s: int, limit: int = 5000
) -> None:
    """Move the test clock by `step_s` until `done()`, giving the deliverer a moment each."""
    for _ in range(limit):
        if done():
            return
        clock.advance(step_s)
        await asyncio.sleep(0.01)
    raise AssertionError("not done after driving the clock")


async def test_flaky_and_six_hours_down_receivers_end_with_everything_in_order(
    shop: Tenant,
) -> None:
    down = {"on": True}
    flaky = Receiver(behaviour=lambda n, e: 500 if n % 2 == 0 else 200)
    downed = Receiver(behaviour=lambda n, e: 503 if down["on"] else 204)
    clock = shop.clock
    assert isinstance(clock, FixedClock)
    async with serving(flaky), serving(downed):
        flaky_id = await subscribe(shop, flaky)
        down_id = await subscribe(shop, downed, ["koban.option.*"])
        await workload(shop)
        expected = await stream(shop)
        d = deliverer(shop)
        await d.start()
        try:
            # The flaky receiver gets everything while the other is down.
            await drive(clock, lambda: len(flaky.acknowledged()) == len(expected), 60)
            assert downed.acknowledged() == []
            await drive(clock, lambda: clock.now() >= T0 + 6 * 3600, 120)
            down["on"] = False
            options = await stream(shop, lambda t: t.startswith("koban.option."))
            await drive(clock, lambda: len(downed.acknowledged()) == len(options), 120)
        finally:
            await d.stop()
    check_order_and_duplicates(flaky, expected, shop.name)
    check_order_and_duplicates(downed, options, shop.name)
    assert shop.subscriptions is not None
    for sub_id in (flaky_id, down_id):
        sub = await shop.subscriptions.get(sub_id)
        assert sub is not None and sub.status == "active" and sub.failure_count == 0
        assert await shop.subscriptions.pending(sub_id) == 0
    assert any(r.answered == 503 for r in downed.received)
    assert sum(r.answered == 500 for r in flaky.received) > 0


async def test_a_410_turns_the_subscription_inactive_and_reactivation_resumes(
    shop: Tenant,
) -> None:
    gone = {"on": True}
    receiver = Receiver(behaviour=lambda n, e: 410 if gone["on"] else 200)
    assert shop.subscriptions is not None
    async with serving(receiver):
        sub_id = await subscribe(shop, receiver)
        await shop.store.place_local("L1", "p1", None, T0)
        d = deliverer(shop)
        await d.start()
        try:

            async def inactive() -> bool:
                sub = await shop.subscriptions.get(sub_id)  # type: ignore[union-attr]
                return sub is not None and sub.status == "inactive"

            await wait_for(inactive)
            sub = await shop.subscriptions.get(sub_id)
            assert sub is not None and sub.disabled_reason == GONE_REASON
            assert await shop.subscriptions.pending(sub_id) == 1  # kept for reactivation
            gone["on"] = False
            await shop.subscriptions.set_status(sub_id, "active", shop.clock.now())
            await wait_for(lambda: len(receiver.acknowledged()) == 1)
        finally:
            await d.stop()
    assert receiver.acked_ids() == [e["id"] for e in await stream(shop)]


async def test_disable_after_counts_time_without_success_not_a_burst(
    redis: Redis, tenant: str
) -> None:
    clock = FixedClock(T0)
    shop = subs_tenant(
        redis,
        tenant,
        clock,
        disable_after="PT1H",
        delivery_retry_schedule=["PT1S"] * 20,
    )
    await shop.store.import_lot("L1", T0 - 60, program="HAR", label="L1")
    receiver = Receiver(behaviour=lambda n, e: 500)
    assert shop.subscriptions is not None
    async with serving(receiver):
        sub_id = await subscribe(shop, receiver)
        await shop.store.place_local("L1", "p1", None, T0)
        d = deliverer(shop)
        await d.start()
        try:
            await drive(clock, lambda: receiver.requests >= 10, 1)
            sub = await shop.subscriptions.get(sub_id)
            assert sub is not None and sub.status == "active" and sub.failure_count >= 10
            clock.advance(3600)
            sub_now: list[Subscription | None] = [None]

            async def disabled() -> bool:
                sub_now[0] = await shop.subscriptions.get(sub_id)  # type: ignore[union-attr]
                return sub_now[0] is not None and sub_now[0].status == "inactive"

            await wait_for(disabled)
            assert "disable_after" in (sub_now[0].disabled_reason or "")  # type: ignore[union-attr]
        finally:
            await d.stop()


async def test_a_killed_deliverer_loses_nothing(
    shop: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver(delay_s=0.02)
    async with serving(receiver):
        await subscribe(shop, receiver)
        await workload(shop, rounds=3)
        expected = await stream(shop)
        first = deliverer(shop, lease_ttl_ms=400)
        await first.start()
        await wait_for(lambda: len(receiver.acknowledged()) >= 5)

        async def crashed(self: Lease) -> bool:  # a killed process releases nothing
            return False

        with monkeypatch.context() as patch:
            patch.setattr(Lease, "release", crashed)
            await first.stop()
        cut = len(receiver.received)
        assert cut < len(expected)
        second = deliverer(shop, lease_ttl_ms=400)
        await second.start()
        try:
            await wait_for(lambda: len(set(receiver.acked_ids())) == len(expected))
        finally:
            await second.stop()
    check_order_and_duplicates(receiver, expected, shop.name)


async def test_two_deliverers_never_deliver_one_subscription_at_once(shop: Tenant) -> None:
    receiver = Receiver(delay_s=0.01)
    async with serving(receiver):
        sub_id = await subscribe(shop, receiver)
        await workload(shop, rounds=3)
        expected = await stream(shop)
        one, two = deliverer(shop, scan_s=0.01), deliverer(shop, scan_s=0.01)
        await asyncio.gather(one.start(), two.start())
        holders: set[int] = set()
        deadline = asyncio.get_running_loop().time() + 60
        try:
            while len(set(receiver.acked_ids())) < len(expected):
                assert asyncio.get_running_loop().time() < deadline, "not delivered in time"
                live = [
                    i
                    for i, d in enumerate((one, two))
                    if (w := d.workers.get((shop.name, sub_id))) and not w[1].done()
                ]
                assert len(live) <= 1
                holders.update(live)
                await asyncio.sleep(0.005)
        finally:
            await asyncio.gather(one.stop(), two.stop())
    assert len(holders) == 1
    assert receiver.max_in_flight_per_entity == 1
    check_order_and_duplicates(receiver, expected, shop.name)


async def test_a_mixed_workload_through_the_api_ticks_and_sandbox_webhooks(
    redis: Redis, tenant: str
) -> None:
    from tests.support.reliability_harness import running_stack

    receiver = Receiver()
    async with running_stack(redis, tenant) as stack, serving(receiver):
        add_subscriptions(stack.tenant)
        await subscribe(stack.tenant, receiver)
        d = deliverer(stack.tenant)
        await d.start()
        try:
            for i, code in enumerate(("L1", "L2", "L3", "L4", "L5")):
                assert (await stack.place(code, f"p{i + 1}")).status == 201
            assert (await stack.place("L1", "p6")).status == 201  # rank 2
            assert (await stack.call("DELETE", "lots/L2/options/1")).status == 200
            await stack.koban.webhooks.drain()
            later = stack.clock.now() + 3 * 86400
            stack.clock.set(later)
            await catch_up(stack.tenant, later)  # our ticks: expiries and promotions
            stack.koban.catch_up()  # Koban's ticks: its option-expired webhooks come back
            await stack.koban.webhooks.drain()
            expected = await stream(stack.tenant)
            kinds = {e["type"] for e in expected}
            assert {"koban.option.placed", "koban.option.expired"} <= kinds
            await wait_for(lambda: len(set(receiver.acked_ids())) >= len(expected))
        finally:
            await d.stop()
        assert sorted(set(receiver.acked_ids())) == sorted(e["id"] for e in expected)
    check_order_and_duplicates(receiver, expected, stack.name)


async def test_events_trimmed_while_inactive_are_logged_as_a_gap(shop: Tenant) -> None:
    import time

    from service.storage.retention import trim_events

    assert shop.subscriptions is not None
    receiver = Receiver()
    async with serving(receiver):
        sub_id = await subscribe(shop, receiver)
        await shop.subscriptions.set_status(sub_id, "inactive", shop.clock.now())
        await shop.store.place_local("L1", "p1", None, T0)
        assert await trim_events(shop.store, shop.name, time.time() + 60, 1) > 0
        await shop.store.place_local("L2", "p2", None, T0)
        kept = [e["id"] for e in await stream(shop)]
        assert kept == ["L2-000000000002"]
        await shop.subscriptions.set_status(sub_id, "active", shop.clock.now())
        d = deliverer(shop)
        await d.start()
        try:
            await wait_for(lambda: receiver.acked_ids() == kept)
        finally:
            await d.stop()
        log, _ = await shop.subscriptions.deliveries(sub_id, 10, None)
        assert [r.type for r in log] == ["koban.option.placed", "koban.subscription.gap"]
        assert "trimmed" in (log[1].error or "")
