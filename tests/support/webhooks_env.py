"""Koban's webhook routes over real HTTP (loopback) on one tenant, and the forms Koban
sends (no tests here): `Env` posts a webhook and reads the lot back; the `make_env` fixture
of tests/integration/conftest.py builds one per date profile (doc, generic).

Shared by tests/integration/test_webhooks*.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.entrypoints.koban_webhooks import TOKEN_HEADER, add_webhook_routes
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from statecharts.model import Lot
from tests.support.instants import ts

SECRET = "s3cret-webhook-token"
A = "A101"
X = "third-x"
Y = "third-y"


T0 = ts("2026-03-02T10:00:00Z")  # a tick
DAY = 86400


@dataclass
class Env:
    client: TestClient[web.Request, web.Application]
    store: LotStore
    clock: FixedClock
    tenant: str
    # "generic": dates go as Koban's generic webhooks write them, /Date(ms)/.
    profile: str = "doc"

    def url(self, name: str) -> str:
        return f"/koban/{self.tenant}/{name}"

    async def post(
        self,
        name: str,
        fields: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        data = dict(fields)
        if self.profile == "generic":
            for key in ("ExpDate", "PrgDate"):
                value = data.get(key)
                seconds = isinstance(value, str) and value.isascii() and value.isdigit()
                if seconds and int(value or 0) <= 10**11:
                    data[key] = f"/Date({int(value) * 1000})/"
        resp = await self.client.post(
            self.url(name),
            data=data,
            headers={TOKEN_HEADER: SECRET} if headers is None else headers,
            params=params,
        )
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()

    async def hook(self, name: str, **fields: str) -> None:
        status, body = await self.post(name, fields)
        assert (status, body) == (200, {"success": True})

    async def check(self, extcode: str = A) -> dict[str, Any]:
        resp = await self.client.get(
            self.url("option-check"), params={"extcode": extcode}, headers={TOKEN_HEADER: SECRET}
        )
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    async def lot(self, extcode: str = A) -> Lot | None:
        return await self.store.load(extcode)

    async def types(self, extcode: str = A) -> list[str]:
        return [str(e["type"]).removeprefix("koban.") for e in await self.store.history(extcode)]

    async def stream(self) -> list[dict[str, Any]]:
        entries: Any = await self.store.redis.xrange(self.store.keys.events)
        return [orjson.loads(f[b"ce"]) for _, f in entries]

    async def needsync(self) -> set[str]:
        raw: set[Any] = await self.store.redis.smembers(self.store.keys.needs_sync)
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}


MakeEnv = Callable[..., Awaitable[Env]]


def placed(
    third: str = X, rank: str = "1", exp: int = T0 + 2 * DAY, extcode: str = A
) -> dict[str, str]:
    """A full option-placed form, every field of the doc."""
    return {
        **third_form(third, rank, extcode),
        "ExpDate": str(exp),
        "Third_Name": "Dupont",
        "Third_FirstName": "Anne",
        "Third_EMail": "anne@example.org",
        "AssignedTo_Name": "Martin",
        "AssignedTo_FirstName": "Paul",
        "AssignedTo_EMail": "paul@example.org",
    }


def third_form(third: str = X, rank: str = "1", extcode: str = A) -> dict[str, str]:
    return {
        "Deal_Extcode": extcode,
        "Deal_Guid": "guid-" + extcode,
        "Third_Extcode": "ext-" + third,
        "Third_Guid": third,
        "Rank": rank,
    }


def expired(third: str = X, extcode: str = A) -> dict[str, str]:
    form = third_form(third, extcode=extcode)
    del form["Rank"]
    return form


@contextlib.asynccontextmanager
async def webhook_envs(redis: Redis, tenant: str, profile: str) -> AsyncIterator[MakeEnv]:
    """`make(**settings)`: the webhook routes of `tenant` with those settings (and the
    secret), served on loopback, as an `Env` of that date profile; closed at the end."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(**settings: Any) -> Env:
        values: dict[str, Any] = {"webhook_secret": SecretStr(SECRET)}
        values.update(settings)
        ts_ = TenantSettings(**values)
        rules = rules_from(ts_)
        store = LotStore(redis, tenant, rules)
        clock = FixedClock(T0 + 600)
        tenants = Tenants({tenant: Tenant(tenant, ts_, rules, store, clock)})
        app = web.Application()
        add_webhook_routes(app, tenants)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Env(client, store, clock, tenant, profile)

    yield make
    for client in clients:
        await client.close()
