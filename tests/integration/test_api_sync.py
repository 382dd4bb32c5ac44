"""``POST /v1/tenants/{t}/sync`` (admin) and ``GET …/sync``: one stock sync at a time per
tenant, run in the background, its outcome readable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service.usecases.sync_runs import claim_sync
from tests.support.api_harness import Api, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def _settled(api: Api) -> dict[str, object]:
    for _ in range(500):
        answer = await api.get("sync", token="read")
        assert answer.status == 200
        if answer.body["state"] != "running":
            return dict(answer.body)
        await asyncio.sleep(0.01)
    raise AssertionError("the sync did not finish")


async def test_sync_before_any_run_says_never(api: Api) -> None:
    answer = await api.get("sync", token="read")
    assert answer.status == 200
    assert answer.body["state"] == "never" and answer.body["startedAt"] is None


async def test_sync_without_body_imports_new_lots_in_the_background(api: Api) -> None:
    api.koban.add_lot("NEW1", programme="HAR", label="Lot NEW1")
    answer = await api.call("POST", "sync")
    assert answer.status == 202, answer.body
    assert answer.body["status"] == "started" and answer.body["full"] is False
    run = await _settled(api)
    assert run["state"] == "succeeded", run
    assert run["imported"] == 1 and run["seen"] >= 1 and run["error"] is None
    lot = await api.get("lots/NEW1", token="read")
    assert lot.status == 200 and lot.body["status"] == "LIBRE"
    types = [e["type"] for e in await api.events() if e["subject"] == "NEW1"]
    assert types == ["koban.lot.imported"]


async def test_full_sync_reads_every_lot(api: Api) -> None:
    assert (await api.post("sync", {"full": True})).status == 202
    run = await _settled(api)
    assert run["state"] == "succeeded" and run["full"] is True
    assert run["seen"] == len(api.koban.lots)


async def test_sync_while_one_runs_is_refused(api: Api) -> None:
    held = await claim_sync(api.tenant)  # another process's run, as far as the API knows
    try:
        answer = await api.post("sync", {})
        assert answer.status == 409 and answer.code == "SYNC_IN_PROGRESS"
    finally:
        await held.release()
    assert (await api.post("sync", {})).status == 202
    assert (await _settled(api))["state"] == "succeeded"


async def test_sync_needs_admin_and_valid_body(api: Api) -> None:
    answer = await api.post("sync", {}, token="write")
    assert answer.status == 403 and answer.code == "FORBIDDEN"
    answer = await api.post("sync", {"full": "yes"})
    assert answer.status == 422 and answer.code == "VALIDATION_FAILED"
    answer = await api.post("sync", {"since": 0})
    assert answer.status == 422 and answer.code == "VALIDATION_FAILED"
    answer = await api.call("POST", "sync", data="{", headers={"Content-Type": "application/json"})
    assert answer.status == 400 and answer.code == "MALFORMED_REQUEST"
    assert (await api.get("sync", token="read")).body["state"] == "never"


async def test_sync_when_koban_is_down_is_recorded_as_failed(api: Api) -> None:
    api.fault(methods=["ncDeal/GetUpdated"], status=503)
    assert (await api.post("sync", {})).status == 202
    run = await _settled(api)
    assert run["state"] == "failed" and run["error"], run
    # the lease was given back: the next run may start
    api.koban.faults.clear()
    assert (await api.post("sync", {})).status == 202
    assert (await _settled(api))["state"] == "succeeded"


async def test_sync_replays_with_the_same_idempotency_key(api: Api) -> None:
    headers = {"Idempotency-Key": "sync-once"}
    first = await api.post("sync", {}, headers=headers)
    second = await api.post("sync", {}, headers=headers)
    assert first.status == second.status == 202
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.body == first.body
    await _settled(api)
