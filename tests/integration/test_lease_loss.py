"""A lease holder learns that it lost its lease and stops before acting on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

import service.usecases.flow_common as flow_common
import service.usecases.flows as flows
import service.usecases.ticking as ticking
from service.clock import FixedClock
from service.storage.lease import Lease, LeaseLost
from service.tenancy import Tenant
from service.usecases.ticking import process_tick
from tests.support.api_harness import Api, make_tenant, running_api


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


async def test_a_lease_taken_by_another_holder_stops_its_block(redis: Redis, tenant: str) -> None:
    key = f"kol:{{{tenant}}}:lease-test"
    lease = Lease(redis, key, ttl_ms=150)
    assert await lease.acquire()
    acted = False
    with pytest.raises(LeaseLost, match="taken by another holder"):
        async with lease.kept():
            await redis.set(key, "another-holder", px=10_000)
            await asyncio.sleep(30)  # the renewer must stop us long before this
            acted = True
    assert not acted
    assert await redis.get(key) == b"another-holder"  # the new holder's lease untouched


async def test_a_lease_redis_cannot_renew_stops_its_block_before_it_could_lapse(
    redis: Redis, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"kol:{{{tenant}}}:lease-test"
    lease = Lease(redis, key, ttl_ms=1500)
    assert await lease.acquire()

    async def unreachable() -> bool:
        raise ConnectionError("Redis away")

    monkeypatch.setattr(lease, "renew", unreachable)
    with pytest.raises(LeaseLost, match="not renewed in time"):
        async with lease.kept():
            await asyncio.sleep(30)
    # Stopped while the lease still stood: nobody else could have taken it yet.
    assert await redis.pttl(key) > 0


async def test_a_block_that_ends_after_its_lease_was_lost_raises_and_leaves_no_cancel(
    redis: Redis, tenant: str
) -> None:
    key = f"kol:{{{tenant}}}:lease-test"
    lease = Lease(redis, key, ttl_ms=150)
    assert await lease.acquire()
    with pytest.raises(LeaseLost):
        async with lease.kept() as held:
            await redis.set(key, "another-holder", px=10_000)
            # A block that swallows the cancellation and ends normally.
            with contextlib.suppress(asyncio.CancelledError):
                await held.gone.wait()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0
    await asyncio.sleep(0.05)  # no stray cancellation arrives later


async def test_a_lease_kept_without_cancelling_is_checked_by_its_holder(
    redis: Redis, tenant: str
) -> None:
    key = f"kol:{{{tenant}}}:lease-test"
    lease = Lease(redis, key, ttl_ms=150)
    assert await lease.acquire()
    async with lease.kept(cancel_on_loss=False) as held:
        held.ensure()  # still ours
        await redis.delete(key)  # lapsed
        await asyncio.wait_for(held.gone.wait(), 10)
        with pytest.raises(LeaseLost, match="lapsed"):
            held.ensure()
    assert await redis.get(key) is None


@pytest.fixture
def t(redis: Redis, tenant: str) -> Tenant:
    return make_tenant(redis, tenant, FixedClock(ts("2026-11-23T10:05:00Z")))


async def test_a_tick_whose_lease_is_taken_stops_and_does_not_record_the_tick(
    t: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick = ts("2026-11-23T10:00:00Z")

    async def slow_sweep(store: Any, upto: int, batch: int = 500) -> Any:
        await store.redis.set(store.keys.tick_lease(upto), "another-daemon", px=10_000)
        await asyncio.sleep(30)
        raise AssertionError("the sweep went on after its lease was lost")

    monkeypatch.setattr(ticking, "sweep_expiries", slow_sweep)
    report = await process_tick(t, tick, lease_ttl_ms=150)
    assert report.outcome == "lease_lost"
    assert await ticking.last_processed(t) is None
    assert await t.store.redis.get(t.store.keys.tick_lease(tick)) == b"another-daemon"


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def test_a_by_rank_write_whose_lot_lease_lapsed_sends_nothing_to_koban(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L1", "p2")).status == 201
    monkeypatch.setattr(flow_common, "LOT_WRITE_LEASE_MS", 150)
    real_check = flows.OptionFlows._check

    async def check_then_lose_the_lease(self: Any, extcode: str, validate: Any) -> Any:
        seen = await real_check(self, extcode, validate)
        # Another process's write takes the lot while this one is between check and call.
        await self.store.redis.set(self.store.keys.lot_writes(extcode), "other", px=10_000)
        held = flow_common._LOT_WRITE.get()
        assert held is not None
        await asyncio.wait_for(held.gone.wait(), 10)
        return seen

    monkeypatch.setattr(flows.OptionFlows, "_check", check_then_lose_the_lease)
    answer = await api.delete("lots/L1/options/2")
    assert answer.status == 503 and answer.code == "STORE_UNAVAILABLE", answer.body
    assert api.koban.calls["ncOption/Undo"] == 0
    assert [o.holder for o in api.koban.lots["L1"].options] == ["p1", "p2"]
