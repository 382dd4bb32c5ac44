"""Security (issue #6, item 4): every route but the public ones needs a token (the routes
enumerated from the app's router), and webhook secrets are taken only where configured.

What it sets up and checks, in detail: docs/testing.md, `test_reliability_security_*.py`.
"""

from __future__ import annotations

import re
import uuid

import pytest
from aiohttp import web
from redis.asyncio import Redis

from service.entrypoints.api.openapi import operations
from service.entrypoints.koban_webhooks import TOKEN_HEADER
from tests.support.api_harness import DAY, T0
from tests.support.redis_snapshot import changed
from tests.support.security_deployment import Deployment, both_snapshots, deployment

PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"}
ONE_SCOPE_SHORT = {"write": "read", "admin": "write"}


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
