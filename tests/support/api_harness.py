"""The API under test, over real HTTP on loopback: the aiohttp app on a private port, the
real Redis fixture, and the Koban sandbox (its own loopback port) as the tenant's Koban.

No tests here: `running_api` and helpers shared by tests/integration/test_api_*.py.

Stock: programme HAR with lots L1..L8 (LIBRE) and P1 (a parking), known to both the
sandbox and the service; prospects p1..p6 in the sandbox; partners cgp-1, cgp-2. The
service and the sandbox share one `FixedClock` (T0 is ten minutes after a tick).
"""

from __future__ import annotations

import contextlib
import json as _json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import orjson
import structlog
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis.asyncio import Redis

from service.bootstrap import KobanFactory, rules_from
from service.clock import FixedClock
from service.config import ApiToken, TenantSettings
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.koban import KobanClient
from service.sandbox import SandboxState, build_sandbox_app
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from tests.support.instants import ts

API_KEY, USER_KEY = "k-api", "k-user"
TOKENS = {
    "admin": ("tok-admin", {"admin"}, None),
    "write": ("tok-write", {"write"}, None),
    "read": ("tok-read", {"read"}, None),
    "cgp1": ("tok-cgp1", {"write"}, "cgp-1"),
    "cgp2": ("tok-cgp2", {"write"}, "cgp-2"),
}
OTHER_TENANT_TOKEN = "tok-other-tenant"
LOTS = ("L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8")
PROSPECTS = ("p1", "p2", "p3", "p4", "p5", "p6")


T0 = ts("2026-11-23T10:10:00Z")
DAY = 86400


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        return self.body.get("errorCode") if isinstance(self.body, dict) else None

    @classmethod
    async def read(cls, response: aiohttp.ClientResponse) -> Answer:
        """The response's status, body (JSON when it parses, else text) and headers."""
        raw = await response.read()
        try:
            parsed: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = raw.decode("utf-8", "replace")
        return cls(response.status, parsed, dict(response.headers))


@dataclass
class Api:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application]
    tenant: Tenant
    clock: FixedClock
    koban: SandboxState
    koban_client: KobanClient
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> LotStore:
        return self.tenant.store

    def path(self, rest: str, tenant: str | None = None) -> str:
        return f"/v1/tenants/{tenant or self.name}/{rest.lstrip('/')}"

    async def call(
        self,
        method: str,
        rest: str,
        *,
        token: str | None = "admin",
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        tenant: str | None = None,
        raw_path: bool = False,
    ) -> Answer:
        sent = dict(headers or {})
        if token is not None:
            secret = TOKENS[token][0] if token in TOKENS else token
            sent.setdefault("Authorization", f"Bearer {secret}")
        body: bytes | str | None = data
        if json is not None:
            body = _json.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        url = rest if raw_path else self.path(rest, tenant)
        async with self.client.request(method, url, data=body, headers=sent) as response:
            return await Answer.read(response)

    async def get(self, rest: str, **kw: Any) -> Answer:
        return await self.call("GET", rest, **kw)

    async def post(self, rest: str, json: Any = None, **kw: Any) -> Answer:
        return await self.call("POST", rest, json=json, **kw)

    async def delete(self, rest: str, **kw: Any) -> Answer:
        return await self.call("DELETE", rest, **kw)

    async def place(self, lot: str, third: str, **kw: Any) -> Answer:
        body: dict[str, Any] = {"thirdGuid": third}
        for key in ("partnerGuid", "rank"):
            if key in kw:
                body[key] = kw.pop(key)
        return await self.post(f"lots/{lot}/options", body, **kw)

    async def events(self) -> list[dict[str, Any]]:
        entries = cast(list[Any], await self.store.redis.xrange(self.store.keys.events))
        return [orjson.loads(fields[b"ce"]) for _, fields in entries]

    def fault(self, **kw: Any) -> None:
        from service.sandbox import Fault

        self.koban.add_fault(Fault.from_json(kw))


def make_tenant(redis: Redis, name: str, clock: FixedClock, **settings: Any) -> Tenant:
    values: dict[str, Any] = {
        "koban_api_key": SecretStr(API_KEY),
        "koban_user_key": SecretStr(USER_KEY),
        "api_tokens": [
            ApiToken(token=SecretStr(tok), scopes=scopes, partner_guid=partner)  # type: ignore[arg-type]
            for tok, scopes, partner in TOKENS.values()
        ],
    }
    values.update(settings)
    ts_ = TenantSettings(**values)
    rules = rules_from(ts_)
    return Tenant(name, ts_, rules, LotStore(redis, name, rules), clock)


def make_sandbox(clock: FixedClock) -> SandboxState:
    state = SandboxState(api_key=API_KEY, user_key=USER_KEY, clock=clock.now)
    state.add_programme("HAR", "Les Jardins d'Harmonie")
    state.add_programme("BEL", "Le Belvédère")
    for code in LOTS:
        state.add_lot(code, programme="HAR", label=f"Lot {code}")
    state.add_lot("P1", programme="BEL", label="Parking 1", link="L1")
    for guid in PROSPECTS:
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    for guid in ("cgp-1", "cgp-2"):
        state.add_third(guid=guid, type="CGP", name=guid)
    return state


async def import_stock(store: LotStore, state: SandboxState, now: int) -> None:
    for code, lot in state.lots.items():
        await store.import_lot(
            code, now, program=lot.program, label=lot.label, secondary=lot.secondary
        )


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """structlog lines logged inside, with context variables merged (the API binds them)."""
    saved = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


def loopback_koban(
    base_url: str, api_key: str, user_key: str
) -> tuple[KobanFactory, list[KobanClient]]:
    """A `koban_factory` for `build_api_app` whose clients call the sandbox at `base_url`
    with short timeouts and no retry, and the list it appends each client it makes to."""
    clients: list[KobanClient] = []

    def factory(tenant: Tenant, session: aiohttp.ClientSession) -> KobanClient:
        client = KobanClient(
            session,
            base_url,
            api_key,
            user_key,
            timeout_s=0.5,
            connect_timeout_s=0.5,
            retries=0,
            rate_per_s=1000.0,
        )
        clients.append(client)
        return client

    return factory, clients


@contextlib.asynccontextmanager
async def running_api(
    redis: Redis,
    tenant: str,
    *,
    other_tenant: bool = True,
    webhook_secret: str | None = None,
    **settings: Any,
) -> AsyncIterator[Api]:
    """The API app and the sandbox on loopback ports; tests wrap it in an `api` fixture.

    `other_tenant`: a second tenant ``<tenant>-b`` (admin token `OTHER_TENANT_TOKEN`) beside
    the test's; `webhook_secret`: Koban's webhooks need it, and the sandbox's lead webhook
    is pointed at the API with it; `settings`: the test's tenant settings."""
    clock = FixedClock(T0)
    state = make_sandbox(clock)
    sandbox = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await sandbox.start_server()
    if webhook_secret is not None:
        settings["webhook_secret"] = SecretStr(webhook_secret)
    t = make_tenant(redis, tenant, clock, **settings)
    tenants = {tenant: t}
    if other_tenant:
        tenants[tenant + "-b"] = make_tenant(
            redis,
            tenant + "-b",
            clock,
            api_tokens=[ApiToken(token=SecretStr(OTHER_TENANT_TOKEN), scopes={"admin"})],
        )
    base_url = str(sandbox.make_url("/api/v1"))
    factory, clients = loopback_koban(base_url, API_KEY, USER_KEY)
    app = build_api_app(
        Tenants(tenants),
        redis,
        koban_factory=factory,
        flow_settings=FlowSettings(predecessor_wait_s=0.2, poll_s=0.01, lot_write_wait_s=1.0),
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    if webhook_secret is not None:
        state.webhooks.configure(
            targets={"lead": str(client.make_url(f"/koban/{tenant}/lead"))},
            token=webhook_secret,
            token_in=["header"],
        )
    await import_stock(t.store, state, T0 - 3600)
    try:
        yield Api(client, t, clock, state, clients[0], tenant, {"koban_url": base_url})
    finally:
        await client.close()
        await sandbox.close()
