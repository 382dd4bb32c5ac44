"""The availability route through the shared-connection reader (`install_fast_reads`, as
`koban-options api` serves it) answers exactly as through the tenant's redis-py client,
for every kind of lot and query, lazy expiry included; an unreachable Redis is still 503
STORE_UNAVAILABLE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from redis.asyncio import Redis

from service.entrypoints.api import build_api_app
from service.entrypoints.api.routes_lots import FAST_READS, install_fast_reads
from service.storage.redis_mux import MuxReader
from service.tenancy import Tenants
from tests.support.api_harness import DAY, TOKENS, Api, running_api
from tests.support.redis_server import free_port

LOTS = ("L1", "L2", "L3", "L4", "L5", "L6", "P1", "NOPE")
QUERIES = ("", "?thirdGuid=p1", "?thirdGuid=p2", "?thirdGuid=p6")


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


@asynccontextmanager
async def fast_app(api: Api, redis: Redis, reader: MuxReader | None = None) -> AsyncIterator[Any]:
    """A second app on the same tenant, reading availability through a `MuxReader`."""
    app = build_api_app(Tenants({api.name: api.tenant}), redis, webhooks=False)
    if reader is None:
        install_fast_reads(app, redis)
        assert FAST_READS in app
    else:
        app[FAST_READS] = reader
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def answer(client: Any, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKENS['read'][0]}"}
    async with client.get(path, headers=headers) as response:
        body = orjson.loads(await response.read())
        body.pop("requestId", None)
        return response.status, body


async def test_fast_reads_answer_as_redis_py(api: Api, redis: Redis) -> None:
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.place("L1", "p2", token="cgp2")).status == 201
    assert (await api.place("L2", "p1")).status == 201
    assert (await api.place("L3", "p3")).status == 201
    deposit = {"thirdGuid": "p3", "price": 1000, "deposit": 10}
    assert (await api.post("lots/L3/prereservation", deposit)).status == 201
    await api.store.sync_status("L4", "blocked", "BLOQUE", api.clock.now())
    api.clock.advance(3600)
    assert (await api.place("L5", "p4")).status == 201
    async with fast_app(api, redis) as fast:
        for moment in (0, 2 * DAY - 3600 + 1800):  # now, then once L1/L2/L3's options are due
            api.clock.advance(moment)
            for lot in LOTS:
                for query in QUERIES:
                    path = api.path(f"lots/{lot}/availability{query}")
                    ours = await answer(fast, path)
                    assert ours == await answer(api.client, path), (lot, query, moment)
                    assert ours[0] == 200
        reader = fast.app[FAST_READS]
        assert reader._protocol is not None and reader._protocol.lost is None  # it was used


async def test_an_unreachable_store_is_503(api: Api, redis: Redis) -> None:
    dead = MuxReader("127.0.0.1", free_port(), timeout=1.0, connect_timeout=1.0)
    async with fast_app(api, redis, dead) as fast:
        headers = {"Authorization": f"Bearer {TOKENS['read'][0]}"}
        async with fast.get(api.path("lots/L1/availability"), headers=headers) as response:
            body = orjson.loads(await response.read())
            assert response.status == 503 and body["errorCode"] == "STORE_UNAVAILABLE"
            assert response.headers["Retry-After"] == "1"
    await dead.aclose()


async def test_the_availability_route_is_matched_first_and_shadows_no_other_route(
    api: Api, redis: Redis
) -> None:
    """aiohttp tries routes in the order they were added: the hottest read goes first
    (`routes_lots.hot_routes`), and every other lot path still reaches its own handler."""
    app = build_api_app(Tenants({api.name: api.tenant}), redis, webhooks=False)
    first = next(iter(app.router.resources()))
    assert first.canonical == "/v1/tenants/{tenant}/lots/{extcode}/availability"
    for path, name in [
        ("/v1/tenants/t/lots/A/availability", "get_availability"),
        ("/v1/tenants/t/lots/availability", "get_lot"),  # a lot named "availability"
        ("/v1/tenants/t/lots/A", "get_lot"),
        ("/v1/tenants/t/lots/A/history", "get_history"),
    ]:
        match = await app.router.resolve(make_mocked_request("GET", path, app=app))
        assert match.handler.__name__ == name, path
