"""`running_api` with tenant settings of the test's choosing (a webhook secret, token CGPs),
and the sandbox's lead webhook pointed at the API. The stock, tokens and clock are
`tests.test_api_harness`'s."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.clock import FixedClock
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.koban import KobanClient
from service.sandbox import build_sandbox_app
from service.tenancy import Tenant, Tenants
from tests.support.api_harness import (
    API_KEY,
    T0,
    USER_KEY,
    Api,
    import_stock,
    make_sandbox,
    make_tenant,
)

WEBHOOK_SECRET = "wh-secret"


@contextlib.asynccontextmanager
async def running_api_with(redis: Redis, tenant: str, **settings: Any) -> AsyncIterator[Api]:
    """The API (tenant `tenant` with `settings`) and the sandbox on loopback ports."""
    clock = FixedClock(T0)
    state = make_sandbox(clock)
    sandbox = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await sandbox.start_server()
    t = make_tenant(redis, tenant, clock, webhook_secret=SecretStr(WEBHOOK_SECRET), **settings)
    base_url = str(sandbox.make_url("/api/v1"))
    clients: list[KobanClient] = []

    def factory(tenant_: Tenant, session: aiohttp.ClientSession) -> KobanClient:
        client = KobanClient(
            session, base_url, API_KEY, USER_KEY, timeout_s=0.5, retries=0, rate_per_s=1000.0
        )
        clients.append(client)
        return client

    app = build_api_app(
        Tenants({tenant: t}),
        redis,
        koban_factory=factory,
        flow_settings=FlowSettings(predecessor_wait_s=0.2, poll_s=0.01, lot_write_wait_s=1.0),
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    state.webhooks.configure(
        targets={"lead": str(client.make_url(f"/koban/{tenant}/lead"))},
        token=WEBHOOK_SECRET,
        token_in=["header"],
    )
    await import_stock(t.store, state, T0 - 3600)
    try:
        yield Api(client, t, clock, state, clients[0], tenant, {"koban_url": base_url})
    finally:
        await client.close()
        await sandbox.close()
