"""The operator page's sessions (docs/operator-page.md) and cookie access to ``/v1``: no session
→ 401 (the sign-in form for ``/ui/``), another tenant → 404 as for tokens, a write without the
session's ``X-CSRF-Token`` → 403, revoked or rotated sessions → 401, a ``read`` session
without the clock control, partner redaction as for the token, Koban's text escaped."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.entrypoints.api import build_api_app
from service.storage.keys import ui_session
from service.storage.redis_client import RedisClient
from service.tenancy import Tenants
from tests.support.operator_page import (
    HOSTILE,
    OTHER_TOKEN,
    TOKENS,
    Served,
    api_tokens,
    serve_operator_page,
    tenant_of,
)

LOTS = {"L1": ("HAR", "Lot L1"), "L2": ("HAR", "Lot L2"), "X1": ("BEL", HOSTILE)}


@pytest.fixture
async def served(redis: RedisClient, redis_url: str, tenant: str) -> AsyncIterator[Served]:
    async with serve_operator_page(redis, redis_url, tenant, LOTS) as running:
        yield running


async def test_without_a_session_ui_shows_the_sign_in_form_and_v1_answers_401(
    served: Served,
) -> None:
    for path in ("/ui/", "/ui/lots/L1"):
        status, page, response = await served.call("GET", path)
        assert status == 401 and response.content_type == "text/html", path
        assert '<form method="post" action="/ui/session">' in page
        assert "Lot L1" not in page and "csrf-token" not in page
    for cookie in ("A" * 43, "garbage", ""):
        status, body, _ = await served.call("GET", served.v1("lots"), cookie=cookie)
        assert (status, body["errorCode"]) == (401, "UNAUTHENTICATED"), cookie


async def test_sign_in_sets_an_httponly_strict_cookie_holding_an_opaque_id(
    served: Served, redis: RedisClient
) -> None:
    status, page, _ = await served.call("POST", "/ui/session", data={"token": "nope"})
    assert status == 401 and "This token is not recognised." in page
    token = TOKENS["admin"][0]
    status, _, response = await served.call("POST", "/ui/session", data={"token": token})
    assert status == 303 and response.headers["Location"] == "/ui/"
    cookie = response.cookies["kol_session"]
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/" and not cookie["secure"]  # plain HTTP here
    session_id = cookie.value
    assert token not in session_id and len(session_id) == 43
    # Redis holds the id's hash, never the id nor the token; with a TTL.
    key = ui_session(hashlib.sha256(session_id.encode()).hexdigest())
    stored = await redis.get(key)
    assert stored is not None and token.encode() not in stored
    assert session_id.encode() not in stored
    assert 0 < await redis.ttl(key) <= 8 * 3600
    status, _, response = await served.call(
        "POST",
        "/ui/session",
        data={"token": token},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert status == 303 and response.cookies["kol_session"]["secure"]


async def test_a_form_from_another_origin_cannot_sign_in(served: Served) -> None:
    token = TOKENS["admin"][0]
    status, body, _ = await served.call(
        "POST", "/ui/session", data={"token": token}, headers={"Origin": "https://evil.example"}
    )
    assert (status, body["errorCode"]) == (403, "FORBIDDEN")
    status, _, _ = await served.call(
        "POST", "/ui/session", data={"token": token}, headers={"Origin": served.url}
    )
    assert status == 303
    status, body, _ = await served.call("POST", "/ui/session", json={"token": token})
    assert (status, body["errorCode"]) == (400, "MALFORMED_REQUEST")
    form = "application/x-www-form-urlencoded"
    for raw, kind in (
        (b"token=%ff%fe", form),
        (b"\xff\xfe=1", form),
        (b"token=x", form + "; charset=nonsense"),
        (b"&".join(b"f%d=1" % i for i in range(20)), form),
    ):
        status, body, _ = await served.call(
            "POST", "/ui/session", data=raw, headers={"Content-Type": kind}
        )
        assert (status, body["errorCode"]) == (400, "MALFORMED_REQUEST"), raw


async def test_the_cookie_reads_v1_as_the_token_does_and_never_another_tenant(
    served: Served,
) -> None:
    session_id, _ = await served.sign_in("read")
    by_cookie = await served.call("GET", served.v1("lots/L1"), cookie=session_id)
    by_token = await served.call("GET", served.v1("lots/L1"), role="read")
    assert by_cookie[0] == by_token[0] == 200 and by_cookie[1] == by_token[1]
    other = served.other.name
    for path in ("lots", "lots/L1", "events"):
        status, body, _ = await served.call("GET", served.v1(path, other), cookie=session_id)
        assert (status, body["errorCode"]) == (404, "TENANT_UNKNOWN"), path
    status, body, _ = await served.call("GET", served.v1("lots", "no-such"), cookie=session_id)
    assert (status, body["errorCode"]) == (404, "TENANT_UNKNOWN")
    # A bearer header wins over the cookie, whatever the cookie says.
    status, _, _ = await served.call(
        "GET",
        served.v1("lots", other),
        cookie=session_id,
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
    )
    assert status == 200


async def test_a_write_with_the_cookie_needs_the_sessions_csrf_value(served: Served) -> None:
    session_id, csrf = await served.sign_in("write")
    url = served.v1("lots/L1/options")
    for sent in (None, "", "x" * 43, csrf + "x"):
        status, body, _ = await served.call(
            "POST", url, cookie=session_id, csrf=sent, json={"thirdGuid": "p1"}
        )
        assert (status, body["errorCode"]) == (403, "FORBIDDEN"), sent
    status, body, _ = await served.call("GET", served.v1("lots/L1"), role="read")
    assert body["options"] == []  # nothing was written
    _, other_csrf = await served.sign_in("write")
    assert other_csrf != csrf  # a value per session
    status, body, _ = await served.call(
        "POST", url, cookie=session_id, csrf=other_csrf, json={"thirdGuid": "p1"}
    )
    assert status == 403
    status, body, _ = await served.call(
        "POST", url, cookie=session_id, csrf=csrf, json={"thirdGuid": "p1"}
    )
    assert status == 201 and body["rank"] == 1 and body["thirdGuid"] == "p1"


async def test_scopes_follow_the_token_and_a_read_session_has_no_clock_control(
    served: Served,
) -> None:
    read_id, read_csrf = await served.sign_in("read")
    status, page, _ = await served.call("GET", "/ui/", cookie=read_id)
    assert status == 200 and 'id="clock-control"' not in page
    status, body, _ = await served.call(
        "POST", served.v1("clock"), cookie=read_id, csrf=read_csrf, json={"advanceBy": "PT1H"}
    )
    assert (status, body["errorCode"]) == (403, "FORBIDDEN")
    status, body, _ = await served.call(
        "POST",
        served.v1("lots/L1/options"),
        cookie=read_id,
        csrf=read_csrf,
        json={"thirdGuid": "p1"},
    )
    assert (status, body["errorCode"]) == (403, "FORBIDDEN")
    admin_id, admin_csrf = await served.sign_in("admin")
    status, page, _ = await served.call("GET", "/ui/", cookie=admin_id)
    assert 'id="clock-control"' in page
    status, body, _ = await served.call(
        "POST", served.v1("clock"), cookie=admin_id, csrf=admin_csrf, json={"advanceBy": "PT1H"}
    )
    assert status == 200 and body["ticksRun"]


async def test_a_partner_session_sees_other_partners_holders_redacted(served: Served) -> None:
    status, _, _ = await served.call(
        "POST", served.v1("lots/L2/options"), role="admin", json={"thirdGuid": "p2"}
    )
    assert status == 201
    session_id, _ = await served.sign_in("cgp1")
    by_cookie = await served.call("GET", served.v1("lots/L2"), cookie=session_id)
    by_token = await served.call("GET", served.v1("lots/L2"), role="cgp1")
    assert by_cookie[1] == by_token[1]
    option = by_cookie[1]["options"][0]
    assert option["thirdGuid"] is None and option["redacted"] is True
    status, page, _ = await served.call("GET", "/ui/lots/L2", cookie=session_id)
    assert status == 200 and "p2" not in page and "redacted" in page


async def test_sign_out_revokes_the_session_and_needs_its_csrf_value(served: Served) -> None:
    session_id, csrf = await served.sign_in("admin")
    status, body, _ = await served.call("DELETE", "/ui/session", cookie=session_id)
    assert (status, body["errorCode"]) == (403, "FORBIDDEN")
    assert (await served.call("GET", served.v1("lots"), cookie=session_id))[0] == 200
    status, _, response = await served.call("DELETE", "/ui/session", cookie=session_id, csrf=csrf)
    assert status == 204 and response.cookies["kol_session"].value == ""
    status, body, _ = await served.call("GET", served.v1("lots"), cookie=session_id)
    assert (status, body["errorCode"]) == (401, "UNAUTHENTICATED")
    status, page, _ = await served.call("GET", "/ui/", cookie=session_id)
    assert status == 401 and 'action="/ui/session"' in page
    status, _, _ = await served.call("DELETE", "/ui/session", cookie=session_id, csrf=csrf)
    assert status == 401


async def test_signing_in_again_rotates_the_id(served: Served) -> None:
    old, _ = await served.sign_in("admin")
    status, _, response = await served.call(
        "POST", "/ui/session", data={"token": TOKENS["read"][0]}, cookie=old
    )
    assert status == 303
    new = response.cookies["kol_session"].value
    assert new != old
    assert (await served.call("GET", served.v1("lots"), cookie=old))[0] == 401
    assert (await served.call("GET", served.v1("lots"), cookie=new))[0] == 200


async def test_removing_the_token_from_the_configuration_ends_its_sessions(
    served: Served, redis: RedisClient
) -> None:
    session_id, _ = await served.sign_in("admin")
    kept = [v for role, v in TOKENS.items() if role != "admin"]
    # The same tenant and Redis, configured again without the admin token.
    tenant = tenant_of(redis, served.tenant.name, served.tenant.clock, api_tokens=api_tokens(kept))
    app = build_api_app(Tenants({tenant.name: tenant}), redis, webhooks=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        headers = {"Cookie": f"kol_session={session_id}"}
        async with client.get(f"/v1/tenants/{tenant.name}/lots", headers=headers) as answer:
            assert answer.status == 401
        async with client.get("/ui/", headers=headers) as answer:
            assert answer.status == 401 and 'action="/ui/session"' in await answer.text()
        read_id, _ = await served.sign_in("read")
        headers = {"Cookie": f"kol_session={read_id}"}
        async with client.get(f"/v1/tenants/{tenant.name}/lots", headers=headers) as answer:
            assert answer.status == 200


async def test_koban_strings_are_text_under_a_strict_policy(served: Served) -> None:
    session_id, _ = await served.sign_in("admin")
    for path in ("/ui/", "/ui/lots/X1"):
        status, page, response = await served.call("GET", path, cookie=session_id)
        assert status == 200
        assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert "<img" not in page  # the label's tag is text, not an element
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/ui/static/ui.js">']
    status, page, response = await served.call("GET", "/docs?url=https://evil.example/o.json")
    assert status == 200 and "evil" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
