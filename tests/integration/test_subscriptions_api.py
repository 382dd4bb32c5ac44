"""Webhook subscriptions over HTTP (docs/subscriptions.md): the envelope for bad input, target
refusals, secrets shown once (never in a replay, a read or a log line), the delivery log,
replay, rotation and ping against a real receiver on loopback."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from service.clock import FixedClock
from service.entrypoints.api import build_api_app
from service.tenancy import Tenant, Tenants
from service.usecases.delivery import Deliverer
from tests.support.subscriptions import (
    ADMIN_TOKEN,
    Receiver,
    serving,
    subs_tenant,
    wait_for,
)

pytestmark = pytest.mark.cluster

T0 = 1_795_000_200  # 2026-11-18T11:10:00Z, a tick + 10 min


@dataclass
class Api:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application]
    tenant: Tenant
    clock: FixedClock

    async def call(
        self, method: str, rest: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        sent = {"Authorization": f"Bearer {ADMIN_TOKEN}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body)
            sent["Content-Type"] = "application/json"
        path = f"/v1/tenants/{self.tenant.name}/{rest}"
        async with self.client.request(method, path, data=data, headers=sent) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None), dict(resp.headers)


@contextlib.asynccontextmanager
async def api_for(redis: Redis, name: str, **settings: Any) -> AsyncIterator[Api]:
    clock = FixedClock(T0)
    tenant = subs_tenant(redis, name, clock, **settings)
    app = build_api_app(Tenants({name: tenant}), redis, koban_factory=lambda t, s: None)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, tenant, clock)
    finally:
        await client.close()


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with api_for(redis, tenant) as running:
        yield running


@pytest.fixture
async def strict(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    """A tenant with the production defaults: https only, no private targets."""
    async with api_for(
        redis, tenant, allow_private_targets=False, allow_http_targets=False
    ) as running:
        yield running


NEW = {"url": "http://127.0.0.1:9/hook", "name": "portal", "types": ["koban.option.*"]}


async def test_create_answers_the_secret_once_and_reads_never_show_it(api: Api) -> None:
    status, body, headers = await api.call("POST", "subscriptions", NEW)
    assert status == 201, body
    assert body["secret"].startswith("whsec_") and len(body["secret"]) == 6 + 32
    assert body["status"] == "active" and body["failureCount"] == 0
    assert body["lastSuccessAt"] is None and body["createdAt"] == "2026-11-18T11:10:00Z"
    assert headers["Location"].endswith(body["id"])
    status, one, _ = await api.call("GET", f"subscriptions/{body['id']}")
    assert status == 200 and "secret" not in one and one["types"] == ["koban.option.*"]
    status, listing, _ = await api.call("GET", "subscriptions")
    assert [s["id"] for s in listing["items"]] == [body["id"]]
    assert body["secret"] not in json.dumps(listing)
    stored = await api.tenant.store.redis.hgetall(api.tenant.subscriptions.keys.index)
    assert body["secret"].encode() not in b"".join(stored.values())  # sealed at rest


async def test_an_idempotent_replay_of_create_and_rotate_carries_a_null_secret(api: Api) -> None:
    key = {"Idempotency-Key": "create-1"}
    status, first, _ = await api.call("POST", "subscriptions", NEW, key)
    assert status == 201 and first["secret"]
    status, again, headers = await api.call("POST", "subscriptions", NEW, key)
    assert status == 201 and headers.get("Idempotent-Replayed") == "true"
    assert again["id"] == first["id"] and again["secret"] is None
    rotate = f"subscriptions/{first['id']}/rotate-secret"
    status, rotated, _ = await api.call("POST", rotate, None, {"Idempotency-Key": "r-1"})
    assert status == 200 and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != first["secret"]
    status, replayed, _ = await api.call("POST", rotate, None, {"Idempotency-Key": "r-1"})
    assert status == 200 and replayed["secret"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**NEW, "url": "ftp://example.org/x"}, "url"),
        ({**NEW, "url": "https:///nohost"}, "url"),
        ({**NEW, "url": "https://example.org:99999/"}, "url"),
        ({**NEW, "types": ["koban.option.exploded"]}, "types"),
        ({**NEW, "types": ["koban.nothing.*"]}, "types"),
        ({**NEW, "types": ["option.*"]}, "types"),
        ({**NEW, "types": []}, "types"),
        ({**NEW, "name": ""}, "name"),
        ({"url": NEW["url"], "types": ["*"]}, "name"),
        ({**NEW, "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_a_422_envelope_and_writes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, answer, _ = await api.call("POST", "subscriptions", body)
    assert status == 422 and answer["errorCode"] == "VALIDATION_FAILED", answer
    assert any(e["field"].startswith(field) for e in answer["errors"]), answer
    assert (await api.call("GET", "subscriptions"))[1]["items"] == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://[fd00::1]/hook",
        "https://localhost/hook",
    ],
)
async def test_private_targets_are_refused_unless_allowed(strict: Api, url: str) -> None:
    status, answer, _ = await strict.call("POST", "subscriptions", {**NEW, "url": url})
    assert status == 422, answer
    assert answer["errors"][0]["field"] == "url"
    assert answer["errors"][0]["message"].startswith("target refused")


async def test_http_needs_the_tenant_to_allow_it(strict: Api, api: Api) -> None:
    status, answer, _ = await strict.call("POST", "subscriptions", {**NEW, "url": "http://e.org/"})
    assert status == 422 and "https" in answer["errors"][0]["message"]
    assert (await api.call("POST", "subscriptions", NEW))[0] == 201


async def test_patch_checks_a_new_url_again_and_delete_removes_everything(
    api: Api, redis: Redis
) -> None:
    _, made, _ = await api.call("POST", "subscriptions", NEW)
    path = f"subscriptions/{made['id']}"
    status, changed, _ = await api.call("PATCH", path, {"name": "erp", "types": ["*"]})
    assert status == 200 and changed["name"] == "erp" and changed["types"] == ["*"]
    strict_settings = api.tenant.settings.model_copy(update={"allow_private_targets": False})
    api.tenant.settings = strict_settings
    status, refused, _ = await api.call("PATCH", path, {"url": "https://10.1.2.3/x"})
    assert status == 422 and refused["errors"][0]["field"] == "url"
    assert (await api.call("GET", path))[1]["url"] == NEW["url"]
    status, off, _ = await api.call("PATCH", path, {"status": "inactive"})
    assert status == 200 and off["status"] == "inactive"
    assert (await api.call("PATCH", path, {"status": "paused"}))[0] == 422
    assert (await api.call("DELETE", path))[0] == 204
    status, gone, _ = await api.call("GET", path)
    assert status == 404 and gone["errorCode"] == "SUBSCRIPTION_NOT_FOUND"
    assert (await api.call("DELETE", path))[0] == 404
    left = [k async for k in redis.scan_iter(match=f"kol:{{{api.tenant.name}}}:sub:*")]
    assert left == []


async def test_reads_need_the_admin_scope(api: Api) -> None:
    path = f"/v1/tenants/{api.tenant.name}/subscriptions"
    async with api.client.get(path) as resp:
        assert resp.status == 401
    async with api.client.get(path, headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 401


async def test_ping_reaches_the_receiver_signed_and_is_logged(api: Api) -> None:
    async with serving(Receiver()) as receiver:
        _, made, _ = await api.call("POST", "subscriptions", {**NEW, "url": receiver.url})
        receiver.secrets = [made["secret"]]
        status, answer, _ = await api.call("POST", f"subscriptions/{made['id']}/ping")
        assert status == 202 and answer == {"status": "queued", "subscriptionId": made["id"]}
        await wait_for(lambda: receiver.acknowledged())
        ping = receiver.acknowledged()[0]
        assert ping.event["type"] == "koban.subscription.ping"
        assert ping.webhook_id == f"{api.tenant.name}:{ping.event['id']}"
        assert ping.headers["Content-Type"] == "application/cloudevents+json"
        assert receiver.forged == 0
        _, log, _ = await api.call("GET", f"subscriptions/{made['id']}/deliveries")
        assert log["items"][0]["eventId"] == ping.event["id"]
        assert log["items"][0]["status"] == 200 and log["items"][0]["attempt"] == 1


async def test_rotation_signs_with_both_secrets_for_a_day_then_the_new_one(api: Api) -> None:
    async with serving(Receiver()) as old_only, serving(Receiver()) as new_only:
        _, made, _ = await api.call("POST", "subscriptions", {**NEW, "url": old_only.url})
        _, rotated, _ = await api.call("POST", f"subscriptions/{made['id']}/rotate-secret")
        old_only.secrets, new_only.secrets = [made["secret"]], [rotated["secret"]]
        sub_path = f"subscriptions/{made['id']}"
        await api.call("POST", sub_path + "/ping")
        await wait_for(lambda: old_only.requests == 1)
        await api.call("PATCH", sub_path, {"url": new_only.url})
        await api.call("POST", sub_path + "/ping")
        await wait_for(lambda: new_only.requests == 1)
        assert len(old_only.acknowledged()) == len(new_only.acknowledged()) == 1
        api.clock.advance(24 * 3600)
        await api.call("PATCH", sub_path, {"url": old_only.url})
        await api.call("POST", sub_path + "/ping")
        await wait_for(lambda: old_only.requests == 2)
        assert old_only.forged == 1  # the old secret no longer signs


async def test_the_delivery_log_pages_newest_first_and_replay_sends_the_same_ids(
    api: Api,
) -> None:
    store = api.tenant.store
    for code in ("L1", "L2", "L3"):
        await store.import_lot(code, T0 - 60, program="HAR", label=code)
    async with serving(Receiver()) as receiver:
        _, made, _ = await api.call("POST", "subscriptions", {**NEW, "url": receiver.url})
        receiver.secrets = [made["secret"]]
        for i, code in enumerate(("L1", "L2", "L3")):
            await store.place_local(code, f"p{i}", None, T0)
        deliverer = Deliverer(Tenants({api.tenant.name: api.tenant}), scan_s=0.05, poll_s=0.01)
        await deliverer.start()
        try:
            await wait_for(lambda: len(receiver.acknowledged()) == 3)
            first_ids = sorted(receiver.acked_ids())
            path = f"subscriptions/{made['id']}"
            status, page, _ = await api.call("GET", path + "/deliveries?limit=2")
            assert status == 200 and len(page["items"]) == 2 and page["nextCursor"]
            status, rest, _ = await api.call(
                "GET", path + f"/deliveries?limit=2&cursor={page['nextCursor']}"
            )
            assert len(rest["items"]) == 1 and rest["nextCursor"] is None
            logged = sorted(i["eventId"] for i in page["items"] + rest["items"])
            assert logged == first_ids
            bad = await api.call("GET", path + "/deliveries?cursor=yesterday")
            assert bad[0] == 422
            status, replay, _ = await api.call("POST", path + "/replay", {})
            assert status == 202 and replay == {"queued": 3}
            await wait_for(lambda: len(receiver.acknowledged()) == 6)
            assert sorted(receiver.acked_ids()[3:]) == first_ids
            window = {"from": "2026-11-18T11:10:00Z", "to": "2026-11-18T11:10:00Z"}
            assert (await api.call("POST", path + "/replay", window))[1] == {"queued": 3}
            early = {"to": "2026-11-18T11:09:59Z"}
            assert (await api.call("POST", path + "/replay", early))[1] == {"queued": 0}
            backwards = {"from": "2026-11-18T12:00:00Z", "to": "2026-11-18T11:00:00Z"}
            assert (await api.call("POST", path + "/replay", backwards))[0] == 422
            await wait_for(lambda: len(receiver.acknowledged()) == 9)
            assert receiver.forged == 0
        finally:
            await deliverer.stop()


async def test_the_secret_is_in_no_log_line(api: Api) -> None:
    seen: list[str] = []
    saved = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        async with serving(Receiver(behaviour=lambda n, e: 500)) as receiver:
            _, made, _ = await api.call("POST", "subscriptions", {**NEW, "url": receiver.url})
            seen.append(made["secret"])
            _, rotated, _ = await api.call("POST", f"subscriptions/{made['id']}/rotate-secret")
            seen.append(rotated["secret"])
            await api.call("POST", f"subscriptions/{made['id']}/ping")
            await wait_for(lambda: receiver.requests == 1)
    finally:
        structlog.configure(**saved)
    text = json.dumps(capture.entries, default=str)
    assert capture.entries and all(s not in text for s in seen)
    assert receiver.url not in text
