"""Koban writes on a lot's existing options are serialized per lot (service/usecases/flows.py
`_lot_write`): Koban addresses options by rank, and ranks move when an option ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.storage.lease import Lease
from service.usecases.flows import LOT_WRITE_LEASE_MS
from service.usecases.sync import reconcile_lot
from tests.support.api_harness import Api, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def _two_options(api: Api) -> None:
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L1", "p2")).status == 201


async def test_a_prolongation_waits_for_a_cancel_that_moves_its_rank(api: Api) -> None:
    await _two_options(api)
    api.fault(latency_ms=300, methods=["ncOption/Undo"], count=1)
    until = "2026-11-27T10:10:00Z"
    cancel = asyncio.create_task(api.delete("lots/L1/options/1?thirdGuid=p1"))
    await asyncio.sleep(0.1)  # the Undo is in flight in Koban
    prolong = await api.post("lots/L1/options/2/prolongation", {"until": until, "thirdGuid": "p2"})
    cancelled = await cancel
    assert cancelled.status == 200, cancelled.body
    # Checked after the Undo was recorded: rank 2 is empty (p2 moved up to rank 1), so the
    # prolongation is refused and nothing is sent to Koban — where rank 2 no longer exists
    # (or, had another prospect placed one meanwhile, is theirs).
    assert prolong.status == 404 and prolong.code == "OPTION_NOT_FOUND", prolong.body
    assert api.koban.calls["ncOption/Prolong"] == 0
    koban_lot = api.koban.lots["L1"]
    assert [(o.rank, o.holder, o.prolonged) for o in koban_lot.options] == [(1, "p2", False)]
    lot = await api.store.load("L1")
    assert lot is not None and [(o.rank, o.holder) for o in lot.options] == [(1, "p2")]
    drift = [e for e in await api.events() if e["type"] == "koban.sync.drift_detected"]
    assert drift == []


async def test_without_a_holder_the_waiting_write_finds_the_rank_empty(api: Api) -> None:
    await _two_options(api)
    api.fault(latency_ms=300, methods=["ncOption/Undo"], count=1)
    cancel = asyncio.create_task(api.delete("lots/L1/options/1"))
    await asyncio.sleep(0.1)
    second = await api.delete("lots/L1/options/2")
    assert (await cancel).status == 200
    assert second.status == 404 and second.code == "OPTION_NOT_FOUND", second.body
    assert api.koban.calls["ncOption/Undo"] == 1  # p2's option (now rank 1) untouched
    assert [o.holder for o in api.koban.lots["L1"].options] == ["p2"]


async def test_a_write_held_up_too_long_is_503_and_sends_nothing(api: Api) -> None:
    await _two_options(api)
    other = Lease(api.store.redis, api.store.keys.lot_writes("L1"), LOT_WRITE_LEASE_MS)
    assert await other.acquire()  # another process's Undo in flight on L1
    try:
        answer = await api.delete("lots/L1/options/2")
        assert answer.status == 503 and answer.code == "STORE_UNAVAILABLE", answer.body
        assert "Retry-After" in answer.headers
        assert api.koban.calls["ncOption/Undo"] == 0
        # other lots are not held up
        assert (await api.place("L2", "p3")).status == 201
    finally:
        await other.release()
    assert (await api.delete("lots/L1/options/2")).status == 200


async def test_reconciliation_leaves_a_lot_with_a_write_in_flight(api: Api) -> None:
    await _two_options(api)
    api.koban.lots["L1"].options.pop()  # Koban lost rank 2 (drift to fix)
    held = Lease(api.store.redis, api.store.keys.lot_writes("L1"), LOT_WRITE_LEASE_MS)
    assert await held.acquire()
    api.clock.advance(60)
    try:
        outcome = await reconcile_lot(api.tenant, api.koban_client, "L1", api.clock.now())
        assert outcome == "deferred"
        assert len((await api.store.load("L1")).options) == 2  # type: ignore[union-attr]
    finally:
        await held.release()
    outcome = await reconcile_lot(api.tenant, api.koban_client, "L1", api.clock.now())
    assert outcome == "fixed"
