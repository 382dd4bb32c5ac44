"""The deployment the security tests drive (no tests here): the API app served by
``web.AppRunner`` (aiohttp's access log on), the Koban sandbox as each tenant's Koban, two
tenants with recognisable secrets of their own (`Secrets`), and a plain HTTP client.

Shared by tests/integration/test_reliability_security_*.py (the `dep` fixture of
tests/integration/conftest.py is one `deployment`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import redis as redis_sync
from aiohttp import web
from pydantic import SecretStr
from redis.asyncio import Redis

from service.clock import FixedClock
from service.config import ApiToken
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.entrypoints.koban_webhooks import TOKEN_HEADER
from service.koban import KobanClient
from service.sandbox import SandboxState, build_sandbox_app
from service.tenancy import Tenant, Tenants
from tests.support.api_harness import T0, import_stock, loopback_koban, make_sandbox, make_tenant
from tests.support.redis_snapshot import snapshot
from tests.support.tenant_keys import delete_tenant_keys

ROLES: dict[str, tuple[set[str], str | None]] = {
    "admin": ({"admin"}, None),
    "write": ({"write"}, None),
    "read": ({"read"}, None),
    "cgp1": ({"write"}, "cgp-1"),
    "cgp2": ({"write"}, "cgp-2"),
}


# --------------------------------------------------------------------------- deployment


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Secrets:
    """Recognisable secrets of one deployment (grep-able in logs)."""

    koban_api_key: str = field(default_factory=lambda: _unique("KOBANAPIKEY"))
    koban_user_key: str = field(default_factory=lambda: _unique("KOBANUSERKEY"))
    # A ";" inside: aiohttp does not split a query there, so it is one secret.
    webhook: str = field(default_factory=lambda: "WHSECRET;" + uuid.uuid4().hex)
    other_webhook: str = field(default_factory=lambda: _unique("WHOTHER"))
    tokens: dict[str, str] = field(
        default_factory=lambda: {role: _unique("TOK" + role.upper()) for role in ROLES}
    )
    other_token: str = field(default_factory=lambda: _unique("TOKOTHERTENANT"))

    def named(self) -> dict[str, str]:
        out = {
            "koban_api_key": self.koban_api_key,
            "koban_user_key": self.koban_user_key,
            "webhook_secret": self.webhook,
            "other_webhook_secret": self.other_webhook,
            "other_tenant_token": self.other_token,
        }
        out.update({f"api_token_{role}": value for role, value in self.tokens.items()})
        return out


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict):
            if "errorCode" in self.body:
                return str(self.body["errorCode"])
            error = self.body.get("error")
            if isinstance(error, dict):
                return str(error.get("code"))
        return None


@dataclass
class Deployment:
    url: str
    app: web.Application
    session: aiohttp.ClientSession
    name: str
    other: str
    tenant: Tenant
    other_tenant: Tenant
    koban: SandboxState
    clients: list[KobanClient]
    secrets: Secrets
    redis_url: str
    now: int = T0  # the service's clock (a FixedClock here)
    sent: int = 0  # requests sent (figures for the README)

    def path(self, rest: str, tenant: str | None = None) -> str:
        return f"/v1/tenants/{tenant or self.name}/{rest.lstrip('/')}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        role: str | None = None,
        json: Any = None,
        data: bytes | str | dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """`path` as is when it starts with "/", else under the tenant's /v1 prefix."""
        sent = dict(headers or {})
        secret = token if token is not None else self.secrets.tokens[role] if role else None
        if secret is not None:
            sent["Authorization"] = f"Bearer {secret}"
        url = self.url + (path if path.startswith("/") else self.path(path))
        self.sent += 1
        async with self.session.request(
            method, yarl_url(url), json=json, data=data, headers=sent
        ) as response:
            raw = await response.read()
            try:
                body: Any = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
            return Answer(response.status, body, dict(response.headers), raw)

    async def hook(
        self,
        name: str,
        fields: dict[str, str] | None = None,
        *,
        header: str | None = None,
        query: str | None = None,
        tenant: str | None = None,
    ) -> Answer:
        """A webhook with the secret in the header and/or (raw, not re-encoded) the query."""
        path = f"/koban/{tenant or self.name}/{name}"
        if query is not None:
            path += "?token=" + query
        headers = {TOKEN_HEADER: header} if header is not None else {}
        if name == "option-check":
            path += ("&" if "?" in path else "?") + "extcode=" + (fields or {}).get("extcode", "L1")
            return await self.call("GET", path, headers=headers)
        return await self.call("POST", path, data=fields or {}, headers=headers)

    def sandbox_options(self) -> dict[str, list[tuple[str | None, int]]]:
        return {
            code: [(o.holder, o.rank) for o in lot.options] for code, lot in self.koban.lots.items()
        }

    def koban_calls(self) -> list[dict[Any, Any]]:
        return [dict(c.calls) for c in self.clients]


def yarl_url(url: str) -> Any:
    """The URL exactly as written (percent-escapes and ";" kept)."""
    from yarl import URL

    return URL(url, encoded=True)


@contextlib.asynccontextmanager
async def deployment(
    redis: Redis, redis_url: str, name: str, *, secrets: Secrets | None = None, **settings: Any
) -> AsyncIterator[Deployment]:
    s = secrets or Secrets()
    clock = FixedClock(T0)
    state = make_sandbox(clock)
    state.api_key, state.user_key = s.koban_api_key, s.koban_user_key
    for guid in ("holder-a1", "holder-b1", "holder-b2", "holder-b3", "holder-x"):
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app)  # aiohttp's access log on, as aiohttp has it by default
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    koban_url = await serve(build_sandbox_app(state, tick_interval=None)) + "/api/v1"
    tokens = [
        ApiToken(token=SecretStr(s.tokens[role]), scopes=scopes, partner_guid=partner)  # type: ignore[arg-type]
        for role, (scopes, partner) in ROLES.items()
    ]
    values: dict[str, Any] = {
        "koban_api_key": SecretStr(s.koban_api_key),
        "koban_user_key": SecretStr(s.koban_user_key),
        "api_tokens": tokens,
        "webhook_secret": SecretStr(s.webhook),
    }
    values.update(settings)
    a = make_tenant(redis, name, clock, **values)
    other_name = name + "-b"
    b = make_tenant(
        redis,
        other_name,
        clock,
        koban_api_key=SecretStr(s.koban_api_key),
        koban_user_key=SecretStr(s.koban_user_key),
        api_tokens=[ApiToken(token=SecretStr(s.other_token), scopes={"admin"})],
        webhook_secret=SecretStr(s.other_webhook),
    )
    factory, clients = loopback_koban(koban_url, s.koban_api_key, s.koban_user_key)
    app = build_api_app(
        Tenants({name: a, other_name: b}),
        redis,
        koban_factory=factory,
        flow_settings=FlowSettings(predecessor_wait_s=0.2, poll_s=0.01),
    )
    try:
        url = await serve(app)
        await import_stock(a.store, state, T0 - 3600)
        async with aiohttp.ClientSession() as session:
            yield Deployment(
                url, app, session, name, other_name, a, b, state, clients, s, redis_url
            )
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        delete_tenant_keys(redis_url, other_name)


def both_snapshots(d: Deployment) -> dict[str, Any]:
    """Both tenants' keys, and the database's key count, as one snapshot."""
    client = redis_sync.Redis.from_url(d.redis_url)
    try:
        a, b = snapshot(client, d.name), snapshot(client, d.other, dbsize=False)
        return {"dbsize": a["dbsize"], "keys": {**a["keys"], **b["keys"]}}
    finally:
        client.close()


async def read_sse(d: Deployment, role: str, count: int) -> list[str]:
    """The `data` of the first `count` events of the stream, read from its start."""
    headers = {"Authorization": f"Bearer {d.secrets.tokens[role]}"}
    url = d.url + d.path("events/stream?after=0-0")
    out: list[str] = []
    async with d.session.get(url, headers=headers) as response, asyncio.timeout(10):
        assert response.status == 200
        while len(out) < count:
            line = (await response.content.readline()).decode()
            assert line, "stream ended"
            if line.startswith("data:"):
                out.append(line[5:].strip())
    return out
