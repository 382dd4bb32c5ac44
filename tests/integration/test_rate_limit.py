"""The per-token rate limit: one bucket per token in Redis, shared by every worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from service.clock import FixedClock
from service.entrypoints.api import build_api_app
from service.tenancy import Tenants
from tests.support.api_harness import T0, TOKENS, make_tenant


async def _workers(redis: Redis, tenant: str, n: int, **settings: Any) -> list[TestClient]:
    """`n` API apps on one Redis, as `api --workers n` runs them."""
    clients = []
    for _ in range(n):
        t = make_tenant(redis, tenant, FixedClock(T0), **settings)
        app = build_api_app(Tenants({tenant: t}), redis, koban_factory=lambda _t, _s: None)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
    return clients


@pytest.fixture
async def two_workers(redis: Redis, tenant: str) -> AsyncIterator[list[TestClient]]:
    clients = await _workers(redis, tenant, 2, api_rate_per_s=0.5, api_burst=3)
    yield clients
    for c in clients:
        await c.close()


async def _get(client: TestClient, tenant: str, token: str) -> tuple[int, dict[str, Any], str]:
    headers = {"Authorization": f"Bearer {TOKENS[token][0]}"}
    async with client.get(f"/v1/tenants/{tenant}/lots", headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Retry-After", "")


async def test_a_token_over_its_rate_gets_429_with_retry_after_across_workers(
    two_workers: list[TestClient], tenant: str
) -> None:
    a, b = two_workers
    statuses = [(await _get(w, tenant, "read"))[0] for w in (a, b, a)]
    assert statuses == [200, 200, 200]  # the burst, spent over both workers
    status, body, retry_after = await _get(b, tenant, "read")
    assert status == 429 and body["errorCode"] == "RATE_LIMITED", body
    assert int(retry_after) >= 1
    # Another token has its own bucket.
    assert (await _get(a, tenant, "admin"))[0] == 200


async def test_without_a_configured_rate_nothing_is_limited(redis: Redis, tenant: str) -> None:
    (client,) = await _workers(redis, tenant, 1)
    try:
        statuses = {(await _get(client, tenant, "read"))[0] for _ in range(30)}
        assert statuses == {200}
        assert await redis.keys(f"kol:{{{tenant}}}:rl:*") == []
    finally:
        await client.close()
