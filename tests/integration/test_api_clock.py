"""Sandbox test clocks over HTTP : ``GET|POST /v1/tenants/{t}/clock``.

The sandbox tenant runs on a `TestClock` over a pinned base clock; the Koban sandbox is
wired to follow it through the app's ``on_clock_advanced`` hook (as ``run`` does), with the
sandbox's own clock on the same base."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.clock import FixedClock, TestClock
from service.config import ApiToken
from service.entrypoints.api import build_api_app
from service.sandbox import SandboxState
from service.tenancy import Tenant, Tenants
from service.usecases.sandbox_clock import refresh
from service.usecases.ticking import last_processed
from tests.support.api_harness import TOKENS, make_tenant
from tests.support.instants import ts
from tests.support.loading import load_options
from tests.support.tenant_keys import delete_tenant_keys

T0 = ts("2026-11-23T10:10:00Z")
ADMIN, WRITE, READ = TOKENS["admin"][0], TOKENS["write"][0], TOKENS["read"][0]
OTHER = "tok-plain-tenant"


@dataclass
class Clocked:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application]
    tenant: Tenant
    base: FixedClock
    plain: str
    koban: SandboxState
    moves: list[tuple[str, int]]

    async def call(
        self, method: str, token: str | None = ADMIN, json: Any = None, tenant: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"/v1/tenants/{tenant or self.tenant.name}/clock"
        async with self.client.request(method, url, json=json, headers=headers) as response:
            return response.status, await response.json()

    async def events(self) -> list[dict[str, Any]]:
        store = self.tenant.store
        entries = cast(list[Any], await store.redis.xrange(store.keys.events))
        return [orjson.loads(fields[b"ce"]) for _, fields in entries]


@pytest.fixture
async def api(redis: Redis, redis_url: str, tenant: str) -> AsyncIterator[Clocked]:
    base = FixedClock(T0)
    sandboxed = make_tenant(redis, tenant, TestClock(base), sandbox=True)  # type: ignore[arg-type]
    plain_name = tenant + "-p"
    plain = make_tenant(
        redis,
        plain_name,
        base,
        api_tokens=[ApiToken(token=SecretStr(OTHER), scopes={"admin"})],
    )
    koban = SandboxState(api_key="k", user_key="u", clock=base.now)
    moves: list[tuple[str, int]] = []

    def follow(t: Tenant, now: int) -> None:
        moves.append((t.name, now))
        koban.advance_to(now)

    app = build_api_app(
        Tenants({tenant: sandboxed, plain_name: plain}),
        redis,
        koban_factory=lambda t, s: None,
        webhooks=False,
        on_clock_advanced=follow,
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Clocked(client, sandboxed, base, plain_name, koban, moves)
    finally:
        await client.close()
        delete_tenant_keys(redis_url, plain_name)


async def test_get_shows_now_next_tick_and_offset(api: Clocked) -> None:
    status, body = await api.call("GET", READ)
    assert status == 200
    assert body == {
        "now": "2026-11-23T10:10:00Z",
        "nextTick": "2026-11-23T10:30:00Z",
        "offsetSeconds": 0,
    }


async def test_advance_by_runs_every_tick_passed_in_order_before_answering(api: Clocked) -> None:
    status, body = await api.call("POST", json={"advanceBy": "PT1H"})
    assert status == 200
    assert body == {
        "now": "2026-11-23T11:10:00Z",
        "ticksRun": ["2026-11-23T10:30:00Z", "2026-11-23T11:00:00Z"],
    }
    status, body = await api.call("GET")
    assert body["offsetSeconds"] == 3600 and body["nextTick"] == "2026-11-23T11:30:00Z"
    assert api.moves == [(api.tenant.name, ts("2026-11-23T11:10:00Z"))]
    assert api.koban.now() == ts("2026-11-23T11:10:00Z")  # the sandbox follows


async def test_advance_to_expires_what_is_due_with_the_notice_first(api: Clocked) -> None:
    store = api.tenant.store
    due = ts("2026-11-23T13:00:00Z")
    await load_options(store, ["L1", "L2"], due, T0 - 86400)
    status, body = await api.call("POST", json={"advanceTo": "2026-11-23T15:00:00+01:00"})
    assert status == 200 and body["now"] == "2026-11-23T14:00:00Z"
    assert body["ticksRun"][0] == "2026-11-23T10:30:00Z"
    assert body["ticksRun"][-1] == "2026-11-23T14:00:00Z" and len(body["ticksRun"]) == 8
    events = await api.events()
    l1 = [(e["type"], e["time"]) for e in events if e["subject"] == "L1"][2:]
    assert l1 == [
        ("koban.option.expiring", "2026-11-23T11:00:00Z"),
        ("koban.option.expired", "2026-11-23T13:00:00Z"),
    ]
    assert await store.redis.zcard(store.keys.expiries) == 0


async def test_the_clock_steps_through_the_ticks_so_a_racing_write_leaves_the_notice(
    api: Clocked,
) -> None:
    """A write on the same clock while it advances (under ``run``: the sandbox's expiry
    webhooks) sees no instant past a tick that is not processed yet: the option it touches
    is not expired lazily before its notice, which the tick two hours earlier gives."""
    store = api.tenant.store
    due = ts("2026-11-23T13:00:00Z")
    await load_options(store, ["L1"], due, T0 - 86400)
    seen: list[tuple[int, int]] = []  # (the clock, the last tick processed)
    moving = asyncio.Event()

    async def racing_writer() -> None:
        while not moving.is_set():
            now = api.tenant.clock.now()
            last = await last_processed(api.tenant) or T0 - T0 % 1800
            seen.append((now, last))

            def touch(lot: Any, _: Any) -> tuple[list[Any], None]:
                return [], None  # nothing of its own: what a write expires lazily lands

            await store.mutate("L1", touch, now=now)
            await asyncio.sleep(0)

    writer = asyncio.create_task(racing_writer())
    await asyncio.sleep(0)
    status, _ = await api.call("POST", json={"advanceTo": "2026-11-23T14:00:00Z"})
    moving.set()
    await writer
    assert status == 200
    assert len(seen) > 8  # the writer ran all along
    assert all(now - last <= 1800 for now, last in seen[1:]), seen
    l1 = [(e["type"], e["time"]) for e in await api.events() if e["subject"] == "L1"][2:]
    assert l1 == [
        ("koban.option.expiring", "2026-11-23T11:00:00Z"),
        ("koban.option.expired", "2026-11-23T13:00:00Z"),
    ]


async def test_moving_backwards_is_422_clock_backwards(api: Clocked) -> None:
    assert (await api.call("POST", json={"advanceBy": "PT30M"}))[0] == 200
    status, body = await api.call("POST", json={"advanceTo": "2026-11-23T10:20:00Z"})
    assert status == 422 and body["errorCode"] == "CLOCK_BACKWARDS"
    assert (await api.call("GET"))[1]["now"] == "2026-11-23T10:40:00Z"  # unchanged
    status, body = await api.call("POST", json={"advanceTo": "2026-11-23T10:40:00Z"})
    assert status == 200 and body["ticksRun"] == []  # to now: allowed, nothing to run


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"advanceTo": "2026-11-24T10:00:00Z", "advanceBy": "PT1H"},
        {"advanceBy": "-PT1H"},
        {"advanceBy": "an hour"},
        {"advanceBy": 3600},
        {"advanceTo": "2026-11-24T10:00:00"},  # no offset
        {"advanceBy": "P32D"},  # more than 31 days at once
        {"advanceBy": "P9999Y"},
        {"advanceTo": "2027-01-01T00:00:00Z"},
        {"advance": "PT1H"},
    ],
)
async def test_invalid_moves_are_422_validation_failed(api: Clocked, body: dict[str, Any]) -> None:
    status, answer = await api.call("POST", json=body)
    assert status == 422 and answer["errorCode"] == "VALIDATION_FAILED", answer
    assert api.moves == []


async def test_a_tenant_without_a_test_clock_is_403_clock_not_sandbox(api: Clocked) -> None:
    for method, body in (("GET", None), ("POST", {"advanceBy": "PT1H"})):
        status, answer = await api.call(method, OTHER, body, tenant=api.plain)
        assert status == 403 and answer["errorCode"] == "CLOCK_NOT_SANDBOX"


async def test_scopes_and_tokens(api: Clocked) -> None:
    assert (await api.call("GET", None))[0] == 401
    assert (await api.call("GET", "nope"))[0] == 401
    assert (await api.call("GET", OTHER))[1]["errorCode"] == "TENANT_UNKNOWN"
    for token in (READ, WRITE):  # moving time is the tenant's admin's business
        status, body = await api.call("POST", token, {"advanceBy": "PT1H"})
        assert status == 403 and body["errorCode"] == "FORBIDDEN"
    assert (await api.call("GET", WRITE))[0] == 200
    assert (await api.call("POST", ADMIN, {"advanceBy": "PT1H"}))[0] == 200


async def test_the_offset_is_shared_through_redis(api: Clocked, redis: Redis) -> None:
    assert (await api.call("POST", json={"advanceBy": "P1D"}))[0] == 200
    # Another process: its own tenant object on the same base time, offset 0 until loaded.
    other = make_tenant(redis, api.tenant.name, TestClock(api.base), sandbox=True)  # type: ignore[arg-type]
    assert other.clock.now() == T0
    assert await refresh(other) == T0 + 86400
    api.base.advance(600)  # real time goes on; the offset stays
    assert other.clock.now() == T0 + 86400 + 600


async def test_an_idempotent_advance_by_moves_once(api: Clocked) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Idempotency-Key": "move-1"}
    url = f"/v1/tenants/{api.tenant.name}/clock"
    answers = []
    for _ in range(2):
        async with api.client.post(url, json={"advanceBy": "PT1H"}, headers=headers) as r:
            answers.append((r.status, await r.json(), r.headers.get("Idempotent-Replayed")))
    assert answers[0][0] == answers[1][0] == 200 and answers[0][1] == answers[1][1]
    assert answers[1][2] == "true"
    assert (await api.call("GET"))[1]["offsetSeconds"] == 3600


async def test_readyz_reports_each_tenants_last_tick(api: Clocked, redis: Redis) -> None:
    from service.storage.keys import SCHEDULER_HEARTBEAT_KEY

    assert (await api.call("POST", json={"advanceBy": "PT30M"}))[0] == 200
    await redis.set(SCHEDULER_HEARTBEAT_KEY, repr(T0 + 0.5), ex=30)
    try:
        async with api.client.get("/readyz") as response:
            body = await response.json()
    finally:
        await redis.delete(SCHEDULER_HEARTBEAT_KEY)
    assert body["scheduler"]["lastTicks"] == {
        api.tenant.name: "2026-11-23T10:30:00Z",
        api.plain: None,
    }
