"""Helpers for the webhook subscription tests (no tests here).

`Receiver`: a real aiohttp server on 127.0.0.1 that verifies every request with the
`standardwebhooks` library against the secrets it was given, records what it accepted
(and what it refused as forged or unsigned), and answers what `behaviour` says.
`subs_tenant` makes a tenant with subscriptions on the given Redis and clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from service.bootstrap import rules_from
from service.clock import Clock
from service.config import ApiToken, TenantSettings
from service.outbound.signing import SecretBox
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.storage.subscriptions import SubscriptionStore
from service.tenancy import Tenant

SUBSCRIPTION_KEY = SecretBox.generate_key()
ADMIN_TOKEN = "tok-subs-admin"


@dataclass
class Received:
    webhook_id: str
    event: dict[str, Any]
    headers: dict[str, str]
    answered: int


@dataclass
class Receiver:
    """`behaviour(n, event) -> status` decides each answer (n counts requests from 1)."""

    secrets: list[str] = field(default_factory=list)
    behaviour: Callable[[int, dict[str, Any]], int] = lambda n, event: 200
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    forged: int = 0
    requests: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight_per_entity: int = 0
    url: str = ""

    def verify(self, body: bytes, headers: dict[str, str]) -> dict[str, Any] | None:
        for secret in self.secrets:
            with contextlib.suppress(WebhookVerificationError):
                parsed: dict[str, Any] = Webhook(secret).verify(body, headers)
                return parsed
        return None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        headers = dict(request.headers)
        event = self.verify(body, headers)
        if event is None:
            self.forged += 1
            return web.Response(status=401)
        entity = str(event.get("partitionkey", ""))
        self.in_flight[entity] = self.in_flight.get(entity, 0) + 1
        self.max_in_flight_per_entity = max(self.max_in_flight_per_entity, self.in_flight[entity])
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status = self.behaviour(self.requests, event)
        finally:
            self.in_flight[entity] -= 1
        self.received.append(Received(headers["webhook-id"], event, headers, status))
        return web.Response(status=status, text="x" * 5000 if status >= 500 else "ok")

    def acknowledged(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.answered < 300]

    def acked_ids(self) -> list[str]:
        return [r.event["id"] for r in self.acknowledged()]


@contextlib.asynccontextmanager
async def serving(receiver: Receiver, path: str = "/hook") -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    receiver.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def subs_settings(**settings: Any) -> TenantSettings:
    values: dict[str, Any] = {
        "api_tokens": [ApiToken(token=SecretStr(ADMIN_TOKEN), scopes={"admin"})],
        "allow_private_targets": True,
        "allow_http_targets": True,
    }
    values.update(settings)
    return TenantSettings(**values)


def subs_tenant(redis: RedisClient, name: str, clock: Clock, **settings: Any) -> Tenant:
    ts = subs_settings(**settings)
    rules = rules_from(ts)
    return Tenant(
        name,
        ts,
        rules,
        LotStore(redis, name, rules),
        clock,
        subscriptions=SubscriptionStore(redis, name),
        secret_box=SecretBox(SUBSCRIPTION_KEY),
    )


def add_subscriptions(tenant: Tenant) -> None:
    """Give a tenant made elsewhere (a shared harness) subscriptions to loopback."""
    tenant.settings = tenant.settings.model_copy(
        update={"allow_private_targets": True, "allow_http_targets": True}
    )
    tenant.subscriptions = SubscriptionStore(tenant.store.redis, tenant.name)
    tenant.secret_box = SecretBox(SUBSCRIPTION_KEY)


async def wait_for(
    condition: Callable[[], Any], timeout_s: float = 30.0, step_s: float = 0.02
) -> None:
    """Poll `condition` (sync or async) until it is true; fails after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step_s)


def events_of(raw: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"ce"]) for _, fields in raw]
