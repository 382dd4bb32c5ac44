"""Security (issue #6, item 4), over real HTTP on loopback: the API app served by
``web.AppRunner`` (aiohttp's access log on), the Koban sandbox as each tenant's Koban, two
tenants with recognisable secrets of their own.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_security.py`.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import signal
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis as redis_sync
import structlog
from aiohttp import web
from pydantic import SecretStr
from redis.asyncio import Redis

from service.clock import FixedClock, SystemClock
from service.config import ApiToken
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.entrypoints.api.logging import configure_logging
from service.entrypoints.api.openapi import operations
from service.entrypoints.koban_webhooks import TOKEN_HEADER, redact_token
from service.koban import KobanClient
from service.sandbox import Fault, SandboxState, build_sandbox_app
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from statecharts.ticks import to_iso
from tests.support.api_harness import DAY, T0, import_stock, make_sandbox, make_tenant
from tests.support.redis_server import free_port
from tests.support.redis_snapshot import changed, snapshot
from tests.support.rules import make_rules
from tests.support.tenant_keys import delete_tenant_keys

SERVICE = Path(__file__).resolve().parents[2] / "service"
ROLES: dict[str, tuple[set[str], str | None]] = {
    "admin": ({"admin"}, None),
    "write": ({"write"}, None),
    "read": ({"read"}, None),
    "cgp1": ({"write"}, "cgp-1"),
    "cgp2": ({"write"}, "cgp-2"),
}
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}
ONE_SCOPE_SHORT = {"write": "read", "admin": "write"}
FORM = "application/x-www-form-urlencoded"


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
    clients: list[KobanClient] = []

    def factory(tenant_: Tenant, session: aiohttp.ClientSession) -> KobanClient:
        client = KobanClient(
            session,
            koban_url,
            s.koban_api_key,
            s.koban_user_key,
            timeout_s=0.5,
            connect_timeout_s=0.5,
            retries=0,
            rate_per_s=1000.0,
        )
        clients.append(client)
        return client

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


@pytest.fixture
async def dep(redis: Redis, redis_url: str, tenant: str) -> AsyncIterator[Deployment]:
    async with deployment(redis, redis_url, tenant) as running:
        yield running


def both_snapshots(d: Deployment) -> dict[str, Any]:
    """Both tenants' keys, and the database's key count, as one snapshot."""
    client = redis_sync.Redis.from_url(d.redis_url)
    try:
        a, b = snapshot(client, d.name), snapshot(client, d.other, dbsize=False)
        return {"dbsize": a["dbsize"], "keys": {**a["keys"], **b["keys"]}}
    finally:
        client.close()


# --------------------------------------------------------------------------- routes


_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
VALUES = {"extcode": "L1", "rank": "1", "third": "p1", "rest": "no-such-webhook"}


def concrete(template: str, tenant: str) -> str:
    return _PARAM.sub(lambda m: tenant if m[1] == "tenant" else VALUES.get(m[1], "x"), template)


def app_routes(app: web.Application) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        out.append((route.method.upper(), resource.canonical))
    return sorted(set(out))


def required_scope(app: web.Application, method: str, template: str) -> str | None:
    op = operations(app).get(("GET" if method == "HEAD" else method, template))
    return op.scope if op is not None else None


async def test_every_route_but_the_public_ones_needs_a_token(dep: Deployment) -> None:
    routes = app_routes(dep.app)
    before = both_snapshots(dep)
    sandbox, calls = dep.sandbox_options(), dep.koban_calls()
    seen_public: set[str] = set()
    checked: dict[str, int] = {"v1": 0, "schemas": 0, "webhook": 0, "catch-all": 0, "ui": 0}
    near_miss = dep.secrets.tokens["admin"] + "x"
    for method, template in routes:
        path = concrete(template, dep.name)
        where = f"{method} {template}"
        if template in PUBLIC:
            answer = await dep.call(method, path)
            assert answer.status == 200, where
            seen_public.add(template)
        elif template.startswith("/v1/schemas/"):
            # The event schemas are the same for every tenant: any tenant's read token.
            checked["schemas"] += 1
            for token in (None, "garbage-" + uuid.uuid4().hex, near_miss, ""):
                answer = await dep.call(method, path, token=token)
                assert answer.status == 401, (where, token, answer.status, answer.body)
            other = await dep.call(method, path, token=dep.secrets.other_token)
            assert other.status in (200, 404), (where, other.status, other.body)
            if other.status == 404 and method != "HEAD":
                assert other.code == "EVENT_TYPE_UNKNOWN", where
        elif template.startswith("/v1/"):
            checked["v1"] += 1
            for token in (None, "garbage-" + uuid.uuid4().hex, near_miss, ""):
                answer = await dep.call(method, path, token=token)
                assert answer.status == 401, (where, token, answer.status, answer.body)
                assert answer.headers["WWW-Authenticate"].startswith("Bearer"), where
            other = await dep.call(method, path, token=dep.secrets.other_token)
            assert other.status == 404, (where, other.status, other.body)
            unknown = await dep.call(method, concrete(template, "no-such-tenant"), role="admin")
            assert unknown.status == 404, (where, unknown.status)
            probing = await dep.call(method, concrete(template, "no-such-tenant"), token="nope")
            assert probing.status == 401, where  # no probing of tenant names
            if method != "HEAD":
                assert (other.code, unknown.code) == ("TENANT_UNKNOWN", "TENANT_UNKNOWN"), where
            scope = required_scope(dep.app, method, template)
            short = ONE_SCOPE_SHORT.get(scope or "")
            if short is not None:
                answer = await dep.call(method, path, role=short)
                assert answer.status == 403, (where, short, answer.status, answer.body)
                if method != "HEAD":
                    assert answer.code == "FORBIDDEN"
        elif template == "/ui/static/{name}":
            checked["ui"] += 1  # the page's own files: public, and nothing else by name
            answer = await dep.call(method, "/ui/static/ui.css")
            assert answer.status == 200, where
            for name in ("x", "../app.py", "%2e%2e/templates/base.html", "templates/base.html"):
                answer = await dep.call(method, "/ui/static/" + name)
                assert answer.status == 404, (where, name, answer.status)
        elif template.startswith("/ui/"):
            checked["ui"] += 1  # operator page: a session cookie or nothing
            for token in (None, "garbage-" + uuid.uuid4().hex, near_miss):
                cookie = {"Cookie": f"kol_session={token}"} if token else {}
                # Signing in takes the token from its form: a wrong one is refused the same.
                form = {"token": token or ""} if method == "POST" else None
                answer = await dep.call(method, path, headers=cookie, data=form)
                assert answer.status == 401, (where, token, answer.status)
        elif template.startswith("/koban/") and method == "*":
            checked["catch-all"] += 1
            for verb in ("GET", "POST", "PUT"):
                answer = await dep.call(verb, path)
                assert answer.status in (404, 405) and answer.body["success"] is False, where
        elif template.startswith("/koban/"):
            checked["webhook"] += 1
            fields = {"Deal_Extcode": "L1", "Third_Guid": "p1", "ExpDate": str(T0 + DAY)}
            for header, query in (
                (None, None),
                ("garbage", None),
                (None, "garbage"),
                (dep.secrets.webhook + "x", None),
                (dep.secrets.other_webhook, None),
                (None, dep.secrets.other_webhook),
            ):
                headers = {TOKEN_HEADER: header} if header is not None else {}
                url = path + (f"?token={query}&extcode=L1" if query else "?extcode=L1")
                data = fields if method == "POST" else None
                answer = await dep.call(method, url, headers=headers, data=data)
                assert answer.status == 401, (where, header, query, answer.status)
                if method != "HEAD":
                    assert answer.code == "UNAUTHENTICATED", where
        else:
            pytest.fail(f"route {where} is neither public, /v1 nor /koban: classify it here")
    assert seen_public == PUBLIC
    assert checked["v1"] >= 20 and checked["webhook"] >= 7 and checked["catch-all"] == 1
    assert checked["ui"] >= 4
    assert checked["schemas"] >= 2
    assert not changed(before, both_snapshots(dep))
    assert (dep.sandbox_options(), dep.koban_calls()) == (sandbox, calls)
    public = len(seen_public)
    print(f"\nSECURITY routes: {len(routes)} ({checked}, public {public}), {dep.sent} requests")


async def test_bearer_auth_is_checked_before_the_body_is_read(dep: Deployment) -> None:
    """A write with a bad body and no token is 401, not 400 (nothing is parsed first)."""
    for token in (None, dep.secrets.other_token):
        answer = await dep.call(
            "POST",
            "lots/L1/options",
            token=token,
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert answer.status == (401 if token is None else 404), answer.body


# --------------------------------------------------------------------------- constant time


class Spy:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.real = hmac.compare_digest

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((bytes(a, "utf-8") if isinstance(a, str) else bytes(a), bytes(b)))
        return self.real(a, b)


async def test_bearer_tokens_are_compared_in_constant_time(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    configured = sum(len(t.settings.api_tokens) for t in (dep.tenant, dep.other_tenant))
    for presented, status in (
        (dep.secrets.tokens["admin"], 200),  # the first configured: still compared to all
        (dep.secrets.tokens["cgp2"], 200),
        (dep.secrets.other_token, 404),
        (dep.secrets.tokens["read"] + "x", 401),
        ("garbage", 401),
    ):
        spy.calls.clear()
        answer = await dep.call("GET", "lots/L1", token=presented)
        assert answer.status == status
        digest = hashlib.sha256(presented.encode()).digest()
        assert len(spy.calls) == configured, presented  # no early exit
        assert all(digest in pair for pair in spy.calls)


async def test_webhook_secrets_are_compared_in_constant_time(
    dep: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    secret = dep.secrets.webhook
    expected = secret.encode()
    for header, query, status in (
        (secret, None, 200),
        (None, secret, 200),
        (secret, secret, 200),
        ("wrong", None, 401),
        (secret, "wrong", 401),
    ):
        for name in ("option-check", "option-expired"):
            spy.calls.clear()
            answer = await dep.hook(
                name, {"Deal_Extcode": "L1", "Third_Guid": "p1"}, header=header, query=query
            )
            assert answer.status == status, (name, header, query, answer.body)
            given = [g for g in (header, query) if g is not None]
            assert spy.calls == [(g.encode(), expected) for g in given], name


_SECRET_WORDS = re.compile(r"(?i)(secret|token|digest|api_key|user_key|password)")


def _secret_operand(node: ast.expr) -> bool:
    text = ast.unparse(node)
    if not _SECRET_WORDS.search(text):
        return False
    # Constants naming a header or a parameter (TOKEN_HEADER, TOKEN_QUERY) are no secrets.
    return not re.fullmatch(r"[A-Z_][A-Z0-9_.]*", text)


def operator_comparisons(source: str, where: str = "") -> list[str]:
    """Comparisons by ==, !=, in, not in with a token, secret or digest as an operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                continue  # 'header' in token_in: where a token goes, not a token
            if isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) and (
                _secret_operand(left) or _secret_operand(right)
            ):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_token_or_secret_is_compared_with_an_operator() -> None:
    """Code inspection: in service/, tokens, secrets and digests are compared only through
    hmac.compare_digest, never with ==, !=, in or not in."""
    planted = "if entry.digest == digest or presented in tokens or s.get_secret_value() != x: pass"
    assert len(operator_comparisons(planted)) == 3  # the scan sees what it looks for
    found = []
    for path in sorted(SERVICE.rglob("*.py")):
        found += operator_comparisons(path.read_text(), str(path.relative_to(SERVICE.parent)))
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- isolation


def _absent(answer: Answer, strings: tuple[str, ...], where: str) -> None:
    for text in strings:
        assert text.encode() not in answer.raw, f"{where}: {text!r} in {answer.raw[:300]!r}"


async def test_a_tenant_never_sees_another_tenants_data(dep: Deployment) -> None:
    a, b = dep.name, dep.other
    keys = redis_sync.Redis.from_url(dep.redis_url)
    b_before = snapshot(keys, b, dbsize=False)
    everything_before = set(keys.scan_iter(count=1000))
    # Tenant A: an option through the API (Koban), one through a webhook, on a lot of its own.
    placed = await dep.call(
        "POST", "lots/L1/options", role="admin", json={"thirdGuid": "holder-a1"}
    )
    assert placed.status == 201, placed.body
    fields = {"Deal_Extcode": "ONLY-A", "Third_Guid": "holder-x", "ExpDate": str(T0 + DAY)}
    assert (await dep.hook("option-placed", fields, header=dep.secrets.webhook)).status == 200
    # A's workload wrote only under A's hash tag; B's keys did not move.
    new = set(keys.scan_iter(count=1000)) - everything_before
    assert new and all(k.startswith(f"kol:{{{a}}}:".encode()) for k in new), new
    assert not changed(b_before, snapshot(keys, b, dbsize=False))
    # Tenant B: a lot with the same extcode, its own holder, its own webhook.
    a_before = snapshot(keys, a, dbsize=False)
    await dep.other_tenant.store.import_lot("L1", T0 - 60, program="HAR", label="B's L1")
    await dep.other_tenant.store.place_local("L1", "holder-of-b", None, T0)
    fields = {"Deal_Extcode": "ONLY-B", "Third_Guid": "holder-of-b2", "ExpDate": str(T0 + DAY)}
    assert (
        await dep.hook("option-placed", fields, header=dep.secrets.other_webhook, tenant=b)
    ).status == 200
    assert not changed(a_before, snapshot(keys, a, dbsize=False))
    keys.close()
    # Each tenant's secret is refused on the other's webhooks.
    for secret, tenant in ((dep.secrets.webhook, b), (dep.secrets.other_webhook, a)):
        for place in ("header", "query"):
            answer = await dep.hook(
                "option-placed",
                fields,
                tenant=tenant,
                **{place: secret},  # type: ignore[arg-type]
            )
            assert answer.status == 401, (tenant, place)
    # Reads: B sees B's data and nothing of A's, and the other way round.
    a_marks = ("holder-a1", "holder-x", "ONLY-A", f'"koban-options/{a}"')
    b_marks = ("holder-of-b", "ONLY-B", f'"koban-options/{b}"')
    reads = (
        "lots?limit=1000",
        "lots/L1",
        "lots/L1/history",
        "lots/L1/availability",
        "options?limit=1000",
        "events?limit=1000",
    )
    for rest in reads:
        mine = await dep.call("GET", dep.path(rest, b), token=dep.secrets.other_token)
        assert mine.status == 200, (rest, mine.body)
        _absent(mine, a_marks, f"tenant B {rest}")
        theirs = await dep.call("GET", dep.path(rest, a), role="admin")
        assert theirs.status == 200, (rest, theirs.body)
        _absent(theirs, b_marks, f"tenant A {rest}")
    for third in ("holder-a1", "holder-of-b"):  # the answer names the prospect asked about
        mine = await dep.call(
            "GET", dep.path(f"prospects/{third}", b), token=dep.secrets.other_token
        )
        theirs = await dep.call("GET", dep.path(f"prospects/{third}", a), role="admin")
        assert bool(mine.body["options"]) == (third == "holder-of-b"), third
        assert bool(theirs.body["options"]) == (third == "holder-a1"), third
    listed = await dep.call("GET", dep.path("lots?limit=1000", b), token=dep.secrets.other_token)
    assert sorted(item["extcode"] for item in listed.body["items"]) == ["L1", "ONLY-B"]
    # And B's token on A's lot that B also has: TENANT_UNKNOWN, not B's lot.
    crossed = await dep.call("GET", dep.path("lots/L1", a), token=dep.secrets.other_token)
    assert (crossed.status, crossed.code) == (404, "TENANT_UNKNOWN")


# --------------------------------------------------------------------------- partners

OTHER_PARTNER_MARKS = ("holder-b1", "holder-b2", "holder-b3", "cgp-2")


async def _partner_stock(d: Deployment) -> None:
    """cgp-1: holder-a1 at L1 rank 1. cgp-2: holder-b1 at L1 rank 2, holder-b2 at L3, a
    préréservation of holder-b3 on L2, and a placement of holder-b2 on L6 left pending."""
    for lot, third, role in (
        ("L1", "holder-a1", "cgp1"),
        ("L1", "holder-b1", "cgp2"),
        ("L3", "holder-b2", "cgp2"),
    ):
        answer = await d.call("POST", f"lots/{lot}/options", role=role, json={"thirdGuid": third})
        assert answer.status == 201, answer.body
    answer = await d.call(
        "POST",
        "lots/L2/prereservation",
        role="cgp2",
        json={"thirdGuid": "holder-b3", "price": 100, "deposit": 10},
    )
    assert answer.status == 201, answer.body
    d.koban.add_fault(
        Fault.from_json(
            {"timeout": True, "hang_seconds": 2, "methods": ["ncOption/Add"], "count": 1}
        )
    )
    answer = await d.call("POST", "lots/L6/options", role="cgp2", json={"thirdGuid": "holder-b2"})
    assert answer.status == 202, answer.body


async def test_a_partner_token_never_acts_on_another_partners_options(dep: Deployment) -> None:
    await _partner_stock(dep)
    before = both_snapshots(dep)
    sandbox, calls = dep.sandbox_options(), dep.koban_calls()
    until = to_iso(T0 + 4 * DAY)
    attempts: list[tuple[str, str, Any]] = [
        ("DELETE", "lots/L1/options/2", None),
        ("DELETE", "lots/L1/options/2?thirdGuid=holder-b1", None),
        ("POST", "lots/L1/options/2/prolongation", {"until": until}),
        ("POST", "lots/L1/options/2/prolongation", {"until": until, "thirdGuid": "holder-b1"}),
        ("DELETE", "lots/L3/options/1", None),
        ("DELETE", "lots/L3/options/1?thirdGuid=holder-b2", None),
        ("POST", "lots/L3/options/1/prolongation", {"until": until}),
        ("POST", "lots/L2/prereservation/withdrawal", {"thirdGuid": "holder-b3"}),
        ("POST", "lots/L4/options", {"thirdGuid": "holder-x", "partnerGuid": "cgp-2"}),
        (
            "POST",
            "lots/L5/prereservation",
            {"thirdGuid": "holder-x", "price": 1, "deposit": 1, "partnerGuid": "cgp-2"},
        ),
    ]
    for method, rest, body in attempts:
        answer = await dep.call(method, rest, role="cgp1", json=body)
        assert (answer.status, answer.code) == (403, "FORBIDDEN"), (method, rest, answer.body)
    assert not changed(before, both_snapshots(dep))  # nothing written
    # With an Idempotency-Key the 403 is stored for replays (README: 4xx answers are kept
    # 24 h), and nothing else is written.
    for method, rest, body in attempts:
        headers = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
        answer = await dep.call(method, rest, role="cgp1", json=body, headers=headers)
        assert (answer.status, answer.code) == (403, "FORBIDDEN"), (method, rest, answer.body)
        replay = await dep.call(method, rest, role="cgp1", json=body, headers=headers)
        assert replay.status == 403
    after = changed(before, both_snapshots(dep))
    assert after and all(":idem:" in c for c in after[1:]) and after[0].startswith("dbsize")
    assert (dep.sandbox_options(), dep.koban_calls()) == (sandbox, calls)  # Koban not called


async def test_a_partner_token_finds_the_other_partners_holders_nowhere(dep: Deployment) -> None:
    await _partner_stock(dep)
    reads = [
        "lots/L1",
        "lots/L2",
        "lots/L3",
        "lots/L6",
        "lots?limit=1000",
        "lots?status=OPTION,PRERESV",
        "options?limit=1000",
        "options?partnerGuid=cgp-2",
        "options?thirdGuid=holder-b1",
        "lots/L1/history",
        "lots/L2/history",
        "lots/L3/history",
        "lots/L6/history",
        "events?limit=1000",
    ]
    for rest in reads:
        answer = await dep.call("GET", rest, role="cgp1")
        assert answer.status == 200, (rest, answer.body)
        _absent(answer, OTHER_PARTNER_MARKS, rest)
        # The redaction leaves the partner's own holder visible.
        if rest in ("lots/L1", "events?limit=1000", "lots/L1/history"):
            assert b"holder-a1" in answer.raw, rest
    for third in ("holder-b1", "holder-b2"):
        answer = await dep.call("GET", f"prospects/{third}", role="cgp1")
        assert answer.status == 200
        listed = orjson.dumps([answer.body["options"], answer.body["pendingPlacements"]])
        assert answer.body["options"] or answer.body["pendingPlacements"], third
        for mark in OTHER_PARTNER_MARKS:
            assert mark.encode() not in listed, (third, mark)
    # The events stream (SSE), from the start of the stream.
    entries = await dep.tenant.store.redis.xlen(dep.tenant.store.keys.events)
    events = await read_sse(dep, "cgp1", entries)
    assert len(events) == entries
    text = "\n".join(events)
    for mark in OTHER_PARTNER_MARKS:
        assert mark not in text, mark
    assert "holder-a1" in text
    # The other partner (and a token without partner) do see them.
    full = await dep.call("GET", "lots/L1", role="cgp2")
    assert b"holder-b1" in full.raw and b"holder-a1" not in full.raw


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


# --------------------------------------------------------------------------- webhook_auth


@pytest.mark.parametrize(
    "allowed", [{"header"}, {"query"}, {"header", "query"}], ids=["header", "query", "both"]
)
async def test_webhook_secrets_are_taken_only_where_configured(
    redis: Redis, redis_url: str, tenant: str, allowed: set[str]
) -> None:
    async with deployment(redis, redis_url, tenant, webhook_auth=allowed) as d:
        right, wrong = d.secrets.webhook, d.secrets.webhook + "x"
        places = [None, right, wrong]
        case = 0
        for header in places:
            for query in places:
                case += 1
                given = [
                    g
                    for g, where in ((header, "header"), (query, "query"))
                    if g is not None and where in allowed
                ]
                accepted = bool(given) and all(g == right for g in given)
                extcode = f"WA-{case}"
                for name in ("option-placed", "option-check"):
                    before = both_snapshots(d)
                    fields = (
                        {"Deal_Extcode": extcode, "Third_Guid": "p1", "ExpDate": str(T0 + DAY)}
                        if name == "option-placed"
                        else {"extcode": extcode}
                    )
                    answer = await d.hook(name, fields, header=header, query=query)
                    where = (sorted(allowed), name, header, query)
                    if not accepted:
                        assert answer.status == 401, where
                        assert answer.body == {
                            "success": False,
                            "error": {
                                "message": "missing or wrong webhook token",
                                "code": "UNAUTHENTICATED",
                            },
                        }
                        assert not changed(before, both_snapshots(d)), where
                        continue
                    assert answer.status == 200, (where, answer.body)
                    if name == "option-placed":
                        lot = await d.tenant.store.load(extcode)
                        assert lot is not None and [o.holder for o in lot.options] == ["p1"], where
                    else:
                        assert (
                            answer.body == {"status": False, "rank": None}
                            or "status" in answer.body
                        )
                        assert not changed(before, both_snapshots(d)), where


# --------------------------------------------------------------------------- logs


class Records(logging.Handler):
    """Every standard-library record, formatted with its exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.names.append(record.name)


@contextlib.contextmanager
def every_log() -> Iterator[Records]:
    """structlog as production sets it up (JSON, debug) and the standard library at DEBUG."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    records = Records()
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    configure_logging("json", "debug")
    try:
        yield records
    finally:
        root.removeHandler(records)
        root.setLevel(level)
        structlog.configure(**saved)


async def _workload(d: Deployment) -> None:
    """Reads, writes through Koban, Koban failures, bad requests, auth failures, webhooks
    with the secret in the header and in ?token=, and an over-long request line."""
    s = d.secrets
    admin_near_miss = s.tokens["admin"] + "x"
    # Reads, writes through Koban (with an idempotent replay), and the event stream.
    for rest in (
        "lots/L1",
        "lots?limit=5",
        "options",
        "events",
        "prospects/p1",
        "lots/L1/availability?source=koban",
    ):
        assert (await d.call("GET", rest, role="read")).status == 200, rest
    headers = {"Idempotency-Key": "k-1"}
    for _ in range(2):
        answer = await d.call(
            "POST", "lots/L1/options", role="write", json={"thirdGuid": "p1"}, headers=headers
        )
        assert answer.status == 201
    until = to_iso(d.now + 4 * DAY)
    assert (
        await d.call("POST", "lots/L1/options/1/prolongation", role="admin", json={"until": until})
    ).status == 200
    assert (await d.call("DELETE", "lots/L1/options/1", role="admin")).status == 200
    assert (
        await d.call("POST", "lots/L2/options", role="cgp1", json={"thirdGuid": "p2"})
    ).status == 201
    body = {"thirdGuid": "p3", "price": 1000, "deposit": 10}
    assert (await d.call("POST", "lots/L3/prereservation", role="admin", json=body)).status == 201
    assert (
        await d.call(
            "POST", "lots/L3/prereservation/withdrawal", role="admin", json={"thirdGuid": "p3"}
        )
    ).status == 200
    await read_sse(d, "admin", 3)
    # Koban failing: unavailable, unusable (our keys refused), outcome unknown.
    d.koban.add_fault(Fault.from_json({"status": 503, "methods": ["ncOption/GetLotStatus"]}))
    assert (
        await d.call("POST", "lots/L4/options", role="admin", json={"thirdGuid": "p4"})
    ).status == 503  # through the client's retries
    d.koban.clear_faults()
    d.koban.api_key = "rotated"
    assert (
        await d.call("POST", "lots/L4/options", role="admin", json={"thirdGuid": "p4"})
    ).status == 502
    d.koban.api_key = s.koban_api_key
    d.koban.add_fault(Fault.from_json({"reset": True, "methods": ["ncOption/Add"], "count": 1}))
    assert (
        await d.call("POST", "lots/L5/options", role="admin", json={"thirdGuid": "p5"})
    ).status == 202
    # Bad requests and auth failures (a near miss contains the whole secret).
    json_type = {"Content-Type": "application/json"}
    assert (
        await d.call("POST", "lots/L6/options", role="admin", data=b"{", headers=json_type)
    ).status == 400
    assert (
        await d.call("POST", "lots/L6/options", role="admin", json={"thirdGuid": "a b"})
    ).status == 422
    assert (await d.call("GET", f"lots/L1?token={s.tokens['admin']}", role="admin")).status == 422
    for token in (admin_near_miss, "garbage", s.other_token):
        assert (await d.call("GET", "lots/L1", token=token)).status in (401, 404)
    basic = {"Authorization": "Basic " + base64.b64encode(s.tokens["admin"].encode()).decode()}
    assert (await d.call("GET", "lots/L1", headers=basic)).status == 401
    # Webhooks: secret in the header, in ?token=, wrong ones, an unknown tenant, bad forms.
    form = {"Deal_Extcode": "L7", "Third_Guid": "p6", "ExpDate": str(d.now + DAY)}
    assert (await d.hook("option-placed", form, header=s.webhook)).status == 200
    assert (await d.hook("option-cancelled", form, query=s.webhook)).status == 200
    assert (await d.hook("option-check", {"extcode": "L7"}, query=s.webhook)).status == 200
    assert (await d.hook("option-placed", form, query=s.webhook + "x")).status == 401
    assert (await d.hook("option-placed", form, header=s.webhook + "x")).status == 401
    assert (await d.hook("option-placed", form, query=s.other_webhook)).status == 401
    assert (await d.hook("option-placed", form, query=s.webhook, tenant="nobody")).status == 404
    assert (await d.hook("option-placed", {"Deal_Extcode": "L7"}, query=s.webhook)).status == 400
    # A request line too long for aiohttp's parser, the secret at its start: aiohttp logs
    # the first bytes of the URL at ERROR, with a traceback.
    path = f"/koban/{d.name}/option-check?token={s.webhook}&extcode=L1&pad=" + "x" * 9000
    host, port = d.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(10):
            assert (await reader.readline()).split()[1] == b"400"
    finally:
        writer.close()


def assert_no_secret(outputs: dict[str, str], secrets: Secrets) -> None:
    for name, secret in secrets.named().items():
        forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        # Any 12 characters of it: a secret cut in two (token=***;rest) leaks too.
        forms |= {secret[i : i + 12] for i in range(len(secret) - 11)}
        for form in forms:
            for where, text in outputs.items():
                assert form not in text, f"{name}: {form!r} of it logged in {where}"


async def test_secrets_are_never_logged(dep: Deployment, capfd: pytest.CaptureFixture[str]) -> None:
    with every_log() as records:
        await _workload(dep)
        await asyncio.sleep(0.05)  # the access log line of the last request
    captured = capfd.readouterr()
    outputs = {"stderr": captured.err, "stdout": captured.out, "stdlib": "\n".join(records.lines)}
    assert_no_secret(outputs, dep.secrets)
    # What was captured is the real thing: JSON lines, aiohttp's access log, the parser error.
    lines = [orjson.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "http_request"]
    assert len(access) >= 30
    assert any("token=***" in line["path"] for line in access)
    assert sum(n == "aiohttp.access" for n in records.names) >= 30
    assert any("token=***" in line for line in records.lines if line.startswith("aiohttp.access"))
    too_long = [line for line in records.lines if "Got more than 8190 bytes" in line]
    assert too_long and all("token=***" in line for line in too_long)
    assert any(line.get("event") == "upstream_failure" for line in lines)
    print(
        f"\nSECURITY logs: {dep.sent} requests, {len(lines)} structlog lines, "
        f"{len(records.lines)} stdlib records"
    )


def test_aiohttps_records_are_redacted_even_without_configure_logging() -> None:
    """Regression: aiohttp's parser error quotes the URL; it reached stderr unredacted
    (Python's last-resort handler prints ERROR records when nothing is configured)."""
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("1.2.3.4",),
        None,
    )
    try:
        raise ValueError(
            "Got more than 8190 bytes: bytearray(b'/koban/t/x?token=s3cr;et&extcode=1')"
        )
    except ValueError:
        record.exc_info = sys.exc_info()
    assert logging.getLogger("aiohttp.server").filter(record)
    formatted = logging.Formatter().format(record)
    assert "s3cr" not in formatted and "et&" not in formatted and "token=***&extcode=1" in formatted


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("/koban/t/x?token=ab;cd&extcode=1", "/koban/t/x?token=***&extcode=1"),
        ("/koban/t/x?extcode=1;token=ab;cd", "/koban/t/x?extcode=1;token=***"),
        ("/koban/t/x?token=ab%3Bcd", "/koban/t/x?token=***"),
        ("bytearray(b'/koban/t/x?token=abcd...')", "bytearray(b'/koban/t/x?token=***"),
    ],
)
def test_redact_token_keeps_no_part_of_a_secret(url: str, redacted: str) -> None:
    """Regression: the value stopped at ";", which aiohttp does not treat as a separator,
    so a secret with a ";" in it was logged from there on (``token=***;cd``)."""
    assert redact_token(url) == redacted


async def test_the_api_process_never_logs_a_secret(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """`koban-options api` as an operator runs it (configuration and secrets from the
    environment, log level debug, the real clock): everything it writes to stdout and
    stderr over the same workload, Koban being the sandbox, holds no secret."""
    name = "s" + uuid.uuid4().hex[:12]
    s = Secrets()
    state = make_sandbox(SystemClock())  # type: ignore[arg-type]
    state.api_key, state.user_key = s.koban_api_key, s.koban_user_key
    for guid in ("holder-x",):
        state.add_third(guid=guid, name=guid.upper(), first_name="F", email=f"{guid}@x.fr")
    sandbox = web.AppRunner(build_sandbox_app(state, tick_interval=None))
    await sandbox.setup()
    await web.TCPSite(sandbox, "127.0.0.1", 0).start()
    host, sandbox_port = sandbox.addresses[0][:2]
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.{name}]\nkoban_base_url = "http://{host}:{sandbox_port}/api/v1"\n'
    )
    prefix = f"KOBAN_OPTIONS_TENANTS__{name.upper()}__"
    tokens = [
        {"token": s.tokens[role], "scopes": sorted(scopes), "partner_guid": partner}
        for role, (scopes, partner) in ROLES.items()
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOBAN_OPTIONS_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "KOBAN_OPTIONS_TENANTS_FILE": str(tenants),
            "KOBAN_OPTIONS_LOG_LEVEL": "debug",
            "KOBAN_OPTIONS_LOG_FORMAT": "json",
            prefix + "KOBAN_API_KEY": s.koban_api_key,
            prefix + "KOBAN_USER_KEY": s.koban_user_key,
            prefix + "WEBHOOK_SECRET": s.webhook,
            prefix + "API_TOKENS": orjson.dumps(tokens).decode(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    binary = Path(sys.executable).with_name("koban-options")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdout=stdout,
            stderr=stderr,
            cwd=tmp_path,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    store = LotStore(redis, name, make_rules())
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, err.read_text()
                    try:
                        async with session.get(url + "/healthz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            now = SystemClock().now()
            await import_stock(store, state, now - 3600)
            d = Deployment(
                url,
                None,
                session,
                name,
                name + "-none",
                None,
                None,
                state,
                [],
                s,  # type: ignore[arg-type]
                redis_url,
                now,
            )
            await _workload(d)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await proc.wait()
        await sandbox.cleanup()
        delete_tenant_keys(redis_url, name)
    assert proc.returncode == 0, err.read_text()[-2000:]
    outputs = {"stdout": out.read_text(), "stderr": err.read_text()}
    assert_no_secret(outputs, s)
    text = "\n".join(outputs.values())
    lines = [orjson.loads(x) for x in text.splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("event") == "http_request"]
    assert len(access) >= 30 and any("token=***" in x["path"] for x in access)
    assert any(x.get("event") == "api_stopped" for x in lines)
    too_long = [x for x in text.splitlines() if "Got more than 8190 bytes" in x]
    assert too_long and all("token=***" in x for x in too_long), too_long
    print(f"\nSECURITY api process: {len(lines)} JSON lines, {len(text)} bytes of output")
