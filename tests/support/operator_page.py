"""The API with the operator page on a loopback port, over a sandbox tenant (test clock on a
pinned base, Koban simulator following it) and a second tenant: what the page's browser
and security tests drive."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from service.bootstrap import rules_from
from service.clock import FixedClock, TestClock
from service.config import ApiToken, TenantSettings
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.koban import KobanClient
from service.sandbox import SandboxState, build_sandbox_app
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from tests.support.tenant_keys import delete_tenant_keys

API_KEY, USER_KEY = "ui-k-api", "ui-k-user"
T0 = 1795428600  # 2026-11-23T10:10:00Z, between two ticks
HOSTILE = "<img src=x onerror=alert(1)>"
TOKENS: dict[str, tuple[str, set[str], str | None]] = {
    "admin": ("ui-tok-admin", {"admin"}, None),
    "write": ("ui-tok-write", {"write"}, None),
    "read": ("ui-tok-read", {"read"}, None),
    "cgp1": ("ui-tok-cgp1", {"write"}, "cgp-1"),
}
OTHER_TOKEN = "ui-tok-other-tenant"
PROSPECTS = ("p1", "p2", "p3")


@dataclass
class Served:
    url: str
    app: web.Application
    tenant: Tenant
    other: Tenant
    koban: SandboxState
    session: aiohttp.ClientSession

    def v1(self, rest: str, tenant: str | None = None) -> str:
        return f"{self.url}/v1/tenants/{tenant or self.tenant.name}/{rest.lstrip('/')}"

    async def call(
        self,
        method: str,
        url: str,
        *,
        role: str | None = None,
        cookie: str | None = None,
        csrf: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """`url` absolute or under the service; a bearer token by role, or a session cookie."""
        sent = dict(headers or {})
        if role is not None:
            sent["Authorization"] = f"Bearer {TOKENS[role][0]}"
        if cookie is not None:
            sent["Cookie"] = f"kol_session={cookie}"
        if csrf is not None:
            sent["X-CSRF-Token"] = csrf
        target = url if url.startswith("http") else self.url + url
        async with self.session.request(
            method, target, json=json, data=data, headers=sent, allow_redirects=False
        ) as response:
            raw = await response.read()
            body: Any = raw.decode("utf-8", "replace")
            if response.content_type == "application/json" and raw:
                body = await response.json()
            return response.status, body, response

    async def sign_in(self, role: str) -> tuple[str, str]:
        """(session id, CSRF value) of a new session of `role`'s token."""
        status, _, response = await self.call(
            "POST", "/ui/session", data={"token": TOKENS[role][0]}
        )
        assert status == 303, status
        session_id = response.cookies["kol_session"].value
        status, page, _ = await self.call("GET", "/ui/", cookie=session_id)
        assert status == 200
        csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        return session_id, csrf


def api_tokens(pairs: Iterable[tuple[str, set[str], str | None]]) -> list[ApiToken]:
    return [
        ApiToken(token=SecretStr(tok), scopes=scopes, partner_guid=partner)  # type: ignore[arg-type]
        for tok, scopes, partner in pairs
    ]


def tenant_of(redis: RedisClient, name: str, clock: Any, **values: Any) -> Tenant:
    settings = TenantSettings(
        koban_api_key=SecretStr(API_KEY), koban_user_key=SecretStr(USER_KEY), **values
    )
    rules = rules_from(settings)
    return Tenant(name, settings, rules, LotStore(redis, name, rules), clock)


@contextlib.asynccontextmanager
async def serve_operator_page(
    redis: RedisClient,
    redis_url: str,
    name: str,
    lots: dict[str, tuple[str, str]],
    *,
    tokens: Iterable[tuple[str, set[str], str | None]] | None = None,
) -> AsyncIterator[Served]:
    """`lots`: extcode → (programme, label), in the sandbox and imported into the tenant."""
    base = FixedClock(T0)
    koban = SandboxState(api_key=API_KEY, user_key=USER_KEY, clock=base.now)
    for programme in sorted({p for p, _ in lots.values()}):
        koban.add_programme(programme, f"Programme {programme}")
    for code, (programme, label) in lots.items():
        koban.add_lot(code, programme=programme, label=label)
    for guid in PROSPECTS:
        koban.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    koban.add_third(guid="cgp-1", type="CGP", name="cgp-1")
    chosen = list(tokens) if tokens is not None else list(TOKENS.values())
    tenant = tenant_of(redis, name, TestClock(base), sandbox=True, api_tokens=api_tokens(chosen))
    other_name = name + "-b"
    other = tenant_of(
        redis, other_name, base, api_tokens=api_tokens([(OTHER_TOKEN, {"admin"}, None)])
    )
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    koban_url = await serve(build_sandbox_app(koban, tick_interval=None)) + "/api/v1"

    def factory(tenant_: Tenant, session: aiohttp.ClientSession) -> KobanClient:
        return KobanClient(
            session, koban_url, API_KEY, USER_KEY, timeout_s=2, retries=0, rate_per_s=1000.0
        )

    app = build_api_app(
        Tenants({name: tenant, other_name: other}),
        redis,
        koban_factory=factory,
        flow_settings=FlowSettings(predecessor_wait_s=0.2, poll_s=0.01, lot_write_wait_s=1.0),
        webhooks=False,
        on_clock_advanced=lambda t, now: koban.advance_to(now),
    )
    try:
        url = await serve(app)
        for code, (programme, label) in lots.items():
            await tenant.store.import_lot(code, T0 - 3600, program=programme, label=label)
        async with aiohttp.ClientSession() as session:
            yield Served(url, app, tenant, other, koban, session)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        delete_tenant_keys(redis_url, other_name)
