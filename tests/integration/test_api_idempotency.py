"""Idempotency-Key on writes: replays, other bodies, requests in flight, what is
stored (2xx, 4xx) and what is not (5xx), and 202 pending replayed as the intent's state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
from redis.asyncio import Redis

from service.usecases.intents import resolve_one
from tests.support.api_harness import DAY, T0, Api, running_api

KEY = {"Idempotency-Key": "order-42"}


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def idem_keys(api: Api) -> list[bytes]:
    pattern = api.store.keys.prefix + "idem:*"
    return [cast(bytes, k) async for k in api.store.redis.scan_iter(match=pattern)]


async def test_same_body_replays_the_stored_answer(api: Api) -> None:
    first = await api.place("L1", "p1", headers=KEY)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    again = await api.place("L1", "p1", headers=KEY)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body == first.body
    assert again.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert len(api.koban.lots["L1"].options) == 1
    assert api.koban_client.calls[("Add", "ok")] == 1
    # Canonical JSON: key order and spacing do not matter.
    raw = b'{ "partnerGuid" : null,\n "thirdGuid":"p1"}'
    reordered = await api.call(
        "POST",
        "lots/L1/options",
        data=b'{"thirdGuid": "p1", "partnerGuid": null}',
        headers={**KEY, "Content-Type": "application/json", "Idempotency-Key": "k2"},
    )
    assert reordered.status == 409  # a new key: p1 already holds an option on L1
    replay = await api.call(
        "POST",
        "lots/L1/options",
        data=raw,
        headers={"Content-Type": "application/json", "Idempotency-Key": "k2"},
    )
    assert replay.status == 409 and replay.headers["Idempotent-Replayed"] == "true"
    keys = await idem_keys(api)
    assert len(keys) == 2
    for key in keys:
        assert 23 * 3600 < await api.store.redis.ttl(key) <= 24 * 3600


async def test_keys_live_under_the_tenants_hash_tag(api: Api) -> None:
    assert (await api.place("L1", "p1", headers=KEY)).status == 201
    keys = await idem_keys(api)
    assert len(keys) == 1 and keys[0].startswith(f"kol:{{{api.name}}}:idem:".encode())
    assert KEY["Idempotency-Key"].encode() not in keys[0]  # the key is hashed with its scope


async def test_other_body_with_the_same_key_is_refused(api: Api) -> None:
    assert (await api.place("L1", "p1", headers=KEY)).status == 201
    other = await api.place("L1", "p2", headers=KEY)
    assert (other.status, other.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert len(api.koban.lots["L1"].options) == 1


async def test_scope_is_token_method_and_path(api: Api) -> None:
    assert (await api.place("L1", "p1", headers=KEY)).status == 201
    other_path = await api.place("L2", "p1", headers=KEY)
    assert other_path.status == 201 and "Idempotent-Replayed" not in other_path.headers
    other_token = await api.place("L3", "p1", headers=KEY, token="write")
    assert other_token.status == 201 and "Idempotent-Replayed" not in other_token.headers
    same_path_other_token = await api.place("L1", "p1", headers=KEY, token="write")
    assert same_path_other_token.status == 409  # run again: p1 already holds L1
    assert len(await idem_keys(api)) == 4


async def test_request_in_flight_is_409(api: Api) -> None:
    api.fault(latency_ms=300, methods=["ncOption/Add"], count=1)
    first = asyncio.create_task(api.place("L1", "p1", headers=KEY))
    await asyncio.sleep(0.1)
    concurrent = await api.place("L1", "p1", headers=KEY)
    assert (concurrent.status, concurrent.code) == (409, "IDEMPOTENCY_IN_PROGRESS")
    assert concurrent.headers["Retry-After"]
    other_body = await api.place("L1", "p9", headers=KEY)
    assert (other_body.status, other_body.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    [key] = await idem_keys(api)
    assert 0 < await api.store.redis.ttl(key) <= 60  # the in-flight marker expires
    done = await first
    assert done.status == 201
    assert (await api.place("L1", "p1", headers=KEY)).headers["Idempotent-Replayed"] == "true"


async def test_client_errors_are_stored_server_errors_are_not(api: Api) -> None:
    await api.store.sync_status("L2", "blocked", "BLOQUE", T0)
    refused = await api.place("L2", "p1", headers=KEY)
    assert (refused.status, refused.code) == (409, "LOT_NOT_AVAILABLE")
    await api.store.sync_status("L2", "free", "LIBRE", T0)
    replay = await api.place("L2", "p1", headers=KEY)
    assert replay.status == 409 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == refused.body
    # 503: not remembered, the retry with the same key runs.
    api.fault(status=503, methods=["ncOption/GetLotStatus"], count=1)
    key = {"Idempotency-Key": "retry-me"}
    unavailable = await api.place("L3", "p1", headers=key)
    assert (unavailable.status, unavailable.code) == (503, "KOBAN_UNAVAILABLE")
    retried = await api.place("L3", "p1", headers=key)
    assert retried.status == 201 and "Idempotent-Replayed" not in retried.headers


async def test_requests_refused_before_the_write_are_not_recorded(api: Api) -> None:
    invalid = await api.post("lots/L1/options", {"thirdGuid": ""}, headers=KEY)
    assert invalid.status == 422
    forbidden = await api.place("L1", "p1", headers=KEY, token="read")
    assert forbidden.status == 403
    assert await idem_keys(api) == []
    assert (await api.place("L1", "p1", headers=KEY)).status == 201


async def test_invalid_key_is_422(api: Api) -> None:
    for bad in ("x" * 256, "é"):
        answer = await api.place("L1", "p1", headers={"Idempotency-Key": bad})
        assert (answer.status, answer.code) == (422, "VALIDATION_FAILED")
        assert answer.body["errors"][0]["field"] == "Idempotency-Key"
    assert not api.koban.lots["L1"].options


async def test_every_write_route_is_idempotent(api: Api) -> None:
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L1", "p2")).status == 201
    until = {"until": "2026-11-28T10:00:00Z"}
    pre = {"thirdGuid": "p3", "price": 10, "deposit": 1}
    for method, rest, body in (
        ("POST", "lots/L1/options/2/prolongation", until),
        ("DELETE", "lots/L1/options/1?thirdGuid=p1", None),
        ("POST", "lots/L2/prereservation", pre),
        ("POST", "lots/L2/prereservation/withdrawal", {"thirdGuid": "p3"}),
    ):
        headers = {"Idempotency-Key": f"k-{rest}"}
        first = await api.call(method, rest, json=body, headers=headers)
        again = await api.call(method, rest, json=body, headers=headers)
        assert first.status in (200, 201), (rest, first)
        assert (again.status, again.body) == (first.status, first.body), rest
        assert again.headers["Idempotent-Replayed"] == "true"
    other_query = await api.call(
        "DELETE",
        "lots/L1/options/1?thirdGuid=p9",
        headers={"Idempotency-Key": "k-lots/L1/options/1?thirdGuid=p1"},
    )
    assert (other_query.status, other_query.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert [o.holder for o in api.koban.lots["L1"].options] == ["p2"]
    assert api.koban.lots["L1"].options[0].prolonged


async def test_pending_replays_as_the_intents_current_state(api: Api) -> None:
    api.fault(timeout=True, hang_seconds=2, methods=["ncOption/Add"], count=1, apply=True)
    pending = await api.place("L1", "p1", headers=KEY)
    assert pending.status == 202
    still = await api.place("L1", "p1", headers=KEY)
    assert still.status == 202 and still.headers["Idempotent-Replayed"] == "true"
    assert still.body == pending.body
    # Koban did place it; the operator (or the scheduler) resolves the intent.
    resolution = await resolve_one(
        api.tenant, api.koban_client, "L1", pending.body["intentId"], api.clock.now()
    )
    assert resolution.outcome == "placed" and resolution.option is not None
    placed = await api.place("L1", "p1", headers=KEY)
    assert placed.status == 201 and placed.headers["Idempotent-Replayed"] == "true"
    assert placed.body["optionId"] == resolution.option.id
    assert placed.body["thirdGuid"] == "p1" and placed.body["rank"] == 1
    # The final answer is now the stored one, even after the option ended.
    assert (await api.delete("lots/L1/options/1")).status == 200
    later = await api.place("L1", "p1", headers=KEY)
    assert (later.status, later.body) == (201, placed.body)


async def test_pending_that_koban_did_not_place_replays_as_409(api: Api) -> None:
    api.fault(timeout=True, hang_seconds=2, methods=["ncOption/Add"], count=1)
    pending = await api.place("L1", "p1", headers=KEY)
    assert pending.status == 202
    api.clock.advance(DAY // 24)
    resolution = await resolve_one(
        api.tenant, api.koban_client, "L1", pending.body["intentId"], api.clock.now()
    )
    assert resolution.outcome == "not_placed"
    answer = await api.place("L1", "p1", headers=KEY)
    assert (answer.status, answer.code, answer.body["source"]) == (
        409,
        "PLACEMENT_NOT_MADE",
        "koban",
    )
    assert answer.headers["Idempotent-Replayed"] == "true"
