"""The stack the reliability tests drive (no tests here): the API app and the Koban sandbox,
each on its own loopback port, talking real HTTP both ways.

What it sets up and checks, in detail: docs/testing.md, `reliability_harness.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as _json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from service.clock import FixedClock
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.entrypoints.api.routes_lots import install_fast_reads
from service.koban import KobanClient
from service.sandbox import WEBHOOK_KINDS, Fault, SandboxState, build_sandbox_app
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from statecharts.ticks import to_iso
from tests.support.api_harness import (
    API_KEY,
    DAY,
    T0,
    TOKENS,
    USER_KEY,
    Answer,
    import_stock,
    make_sandbox,
    make_tenant,
)

__all__ = [
    "SECRET",
    "T0",
    "UNTIL",
    "SandboxServer",
    "Stack",
    "grace",
    "running_stack",
    "snapshot",
]

SECRET = "reliability-webhook-secret"
UNTIL = to_iso(T0 + 4 * DAY)  # a prolongation date (test_reliability_faults*.py)


class SandboxServer:
    """The sandbox app on a loopback port that survives `stop()` / `start()`."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.port: int | None = None
        self._server: TestServer | None = None

    async def start(self) -> None:
        assert self._server is None
        server = TestServer(build_sandbox_app(self.state, tick_interval=None), port=self.port)
        await server.start_server()
        self.port = server.port
        self._server = server

    async def stop(self) -> None:
        """Close the listening socket and every connection: Koban refuses connections."""
        if self._server is not None:
            await self._server.close()
            self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    tenant: Tenant
    clock: FixedClock
    koban: SandboxState
    sandbox: SandboxServer
    koban_client: KobanClient  # the API's own client of the sandbox
    api_url: str
    http: aiohttp.ClientSession
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.tenant.name

    @property
    def store(self) -> LotStore:
        return self.tenant.store

    async def call(
        self,
        method: str,
        rest: str,
        *,
        json: Any = None,
        token: str = "admin",
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = {"Authorization": f"Bearer {TOKENS[token][0]}", **(headers or {})}
        body = None
        if json is not None:
            body = _json.dumps(json)
            sent["Content-Type"] = "application/json"
        url = f"{self.api_url}/v1/tenants/{self.name}/{rest.lstrip('/')}"
        async with self.http.request(method, url, data=body, headers=sent) as response:
            return await Answer.read(response)

    async def place(self, lot: str, third: str, **kw: Any) -> Answer:
        return await self.call("POST", f"lots/{lot}/options", json={"thirdGuid": third}, **kw)

    async def prolong(self, lot: str, rank: int, until: str, third: str | None = None) -> Answer:
        body: dict[str, Any] = {"until": until}
        if third is not None:
            body["thirdGuid"] = third
        return await self.call("POST", f"lots/{lot}/options/{rank}/prolongation", json=body)

    async def cancel(self, lot: str, rank: int, third: str | None = None) -> Answer:
        query = f"?thirdGuid={third}" if third is not None else ""
        return await self.call("DELETE", f"lots/{lot}/options/{rank}{query}")

    def fault(self, **kw: Any) -> None:
        self.koban.add_fault(Fault.from_json(kw))

    async def delivered(self) -> None:
        """Every webhook the sandbox fired so far has been delivered (or has failed)."""
        await self.koban.webhooks.drain()

    async def events(self) -> list[dict[str, Any]]:
        entries = cast(list[Any], await self.store.redis.xrange(self.store.keys.events))
        return [orjson.loads(fields[b"ce"]) for _, fields in entries]


async def snapshot(store: LotStore, codes: Iterable[str]) -> dict[str, Any]:
    """What "nothing half-written" compares before and after a refused write: each lot as
    stored but for its revision (an intent reserved then released moves only that), its
    history, and the tenant's counts, indexes, tombstones and stream length."""
    keys = store.keys
    redis = store.redis
    out: dict[str, Any] = {}
    for code in codes:
        lot = await store.load(code)
        out[f"lot:{code}"] = dataclasses.replace(lot, rev=0) if lot is not None else None
        out[f"history:{code}"] = await store.history(code)
    out["counts"] = await redis.hgetall(keys.counts)
    out["expiries"] = await redis.zrange(keys.expiries, 0, -1, withscores=True)
    out["intents"] = await redis.zrange(keys.intents, 0, -1, withscores=True)
    out["tombstones"] = await redis.zrange(keys.tombstones, 0, -1, withscores=True)
    out["stream"] = await redis.xlen(keys.events)
    return out


@contextlib.asynccontextmanager
async def running_stack(
    redis: Redis,
    tenant: str,
    *,
    koban: Mapping[str, Any] | None = None,
    webhooks: bool = True,
    flow_settings: FlowSettings | None = None,
    lots: Iterable[str] = (),
    prospects: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    fast_reads: bool = False,
) -> AsyncIterator[Stack]:
    """The API and the sandbox on loopback; `koban` overrides `KobanClient` keywords;
    `fast_reads` installs the availability route's `MuxReader` as `koban-options api`
    does."""
    clock = FixedClock(T0)
    state = make_sandbox(clock)
    for code in lots:
        state.add_lot(code, programme="HAR", label=f"Lot {code}")
    for guid in prospects:
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    sandbox = SandboxServer(state)
    await sandbox.start()
    t = make_tenant(redis, tenant, clock, webhook_secret=SECRET, **dict(settings or {}))
    clients: list[KobanClient] = []

    def factory(tenant_: Tenant, session: aiohttp.ClientSession) -> KobanClient:
        client = KobanClient(
            session, sandbox.base_url + "/api/v1", API_KEY, USER_KEY, **dict(koban or {})
        )
        clients.append(client)
        return client

    app = build_api_app(
        Tenants({tenant: t}), redis, koban_factory=factory, flow_settings=flow_settings
    )
    if fast_reads:
        install_fast_reads(app, redis)
    api = TestServer(app, host="127.0.0.1")
    await api.start_server()
    api_url = str(api.make_url("")).rstrip("/")
    if webhooks:
        base = f"{api_url}/koban/{tenant}/"
        targets = {kind: base + kind.replace("_", "-") for kind in WEBHOOK_KINDS}
        targets["option_check"] = base + "option-check"
        state.webhooks.configure(targets=targets, token=SECRET)
    await import_stock(t.store, state, T0 - 3600)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        yield Stack(t, clock, state, sandbox, clients[0], api_url, http)
    finally:
        await http.close()
        await api.close()
        await sandbox.stop()


def grace(stack: Stack) -> int:
    return int(stack.tenant.settings.intent_grace.fixed_seconds())
