"""The API's error envelope, authentication and request ids, over real HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from service.entrypoints.api import build_api_app
from service.entrypoints.api.logging import configure_logging, log_access
from service.storage.redis_client import connect
from service.tenancy import Tenants
from tests.support.api_harness import (
    OTHER_TENANT_TOKEN,
    T0,
    Api,
    FixedClock,
    captured_logs,
    make_tenant,
    running_api,
)


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


ENVELOPE = {"errorCode", "message", "kobanCode", "source", "requestId", "errors"}


def assert_envelope(answer: Any, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer
    body = answer.body
    assert set(body) == ENVELOPE, body
    assert body["errorCode"] == code
    assert body["requestId"] == answer.headers["X-Request-ID"]
    assert answer.headers["Content-Type"].startswith("application/json")
    return dict(body)


# --------------------------------------------------------------------------- auth


async def test_healthz_needs_no_token(api: Api) -> None:
    answer = await api.call("GET", "/healthz", token=None, raw_path=True)
    assert answer.status == 200 and answer.body == {"status": "ok"}
    assert answer.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Basic dG9rLWFkbWluOg==", "Bearer tok-unknown", "bearer  "],
)
async def test_missing_or_unknown_token_is_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    answer = await api.get("lots/L1", token=None, headers=headers)
    body = assert_envelope(answer, 401, "UNAUTHENTICATED")
    assert body["source"] is None and body["kobanCode"] is None and body["errors"] == []
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    answer = await api.get("lots/L1", token=None, headers={"Authorization": "bearer tok-read"})
    assert answer.status == 200


async def test_unknown_token_on_unknown_tenant_is_401_not_404(api: Api) -> None:
    """An outsider cannot tell a tenant that exists from one that does not."""
    answer = await api.get("lots/L1", token="tok-nope", tenant="no-such-tenant")
    assert_envelope(answer, 401, "UNAUTHENTICATED")


async def test_token_of_another_tenant_is_tenant_unknown(api: Api) -> None:
    other = await api.get("lots/L1", token=OTHER_TENANT_TOKEN)
    unknown = await api.get("lots/L1", tenant="no-such-tenant")
    assert_envelope(other, 404, "TENANT_UNKNOWN")
    assert_envelope(unknown, 404, "TENANT_UNKNOWN")
    assert other.body["message"].replace(api.name, "X") == unknown.body["message"].replace(
        "no-such-tenant", "X"
    )
    write = await api.place("L1", "p1", token=OTHER_TENANT_TOKEN)
    assert_envelope(write, 404, "TENANT_UNKNOWN")
    assert not api.koban.lots["L1"].options


@pytest.mark.parametrize(
    ("method", "rest", "body"),
    [
        ("POST", "lots/L1/options", {"thirdGuid": "p1"}),
        ("POST", "lots/L1/options/1/prolongation", {"until": "2026-11-30T10:00:00Z"}),
        ("DELETE", "lots/L1/options/1", None),
        ("POST", "lots/L1/prereservation", {"thirdGuid": "p1", "price": 1, "deposit": 1}),
        ("POST", "lots/L1/prereservation/withdrawal", {"thirdGuid": "p1"}),
    ],
)
async def test_read_token_cannot_write(api: Api, method: str, rest: str, body: Any) -> None:
    answer = await api.call(method, rest, token="read", json=body)
    assert_envelope(answer, 403, "FORBIDDEN")
    assert not api.koban.lots["L1"].options


async def test_write_token_reads_and_read_token_reads(api: Api) -> None:
    for token in ("read", "write", "admin", "cgp1"):
        assert (await api.get("lots/L1", token=token)).status == 200


# --------------------------------------------------------------------------- routes, bodies


async def test_unknown_route_and_method_are_json(api: Api) -> None:
    missing = await api.get("nothing/here")
    assert_envelope(missing, 404, "NOT_FOUND")
    outside = await api.call("GET", "/v2/whatever", raw_path=True, token=None)
    assert_envelope(outside, 404, "NOT_FOUND")
    wrong = await api.call("PUT", "lots/L1")
    body = assert_envelope(wrong, 405, "METHOD_NOT_ALLOWED")
    assert body["source"] is None and "GET" in wrong.headers["Allow"]


@pytest.mark.parametrize(
    ("data", "content_type", "why"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"thirdGuid": "p1"', "application/json", "not valid JSON"),
        (b'{"thirdGuid": "p1"}', "text/plain", "Content-Type"),
        (b'{"thirdGuid": "p1"}', None, "Content-Type"),
        (b"", "application/json", "required"),
        (b"\xff\xfe\x00", "application/json", "not valid JSON"),
        (b'{"thirdGuid": "' + b"x" * 70_000 + b'"}', "application/json", "exceeds"),
    ],
)
async def test_malformed_bodies_are_400(
    api: Api, data: bytes, content_type: str | None, why: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await api.call("POST", "lots/L1/options", data=data, headers=headers)
    body = assert_envelope(answer, 400, "MALFORMED_REQUEST")
    assert why in body["message"]
    assert not api.koban.lots["L1"].options


async def test_chunked_body_over_the_limit_is_400(api: Api) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 8192

    path = api.path("lots/L1/options")
    headers = {"Authorization": "Bearer tok-admin", "Content-Type": "application/json"}
    async with api.client.post(path, data=chunks(), headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["errorCode"] == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    ("rest", "body", "fields"),
    [
        ("lots/L1/options", {}, ["thirdGuid"]),
        ("lots/L1/options", [], ["body"]),
        ("lots/L1/options", "p1", ["body"]),
        ("lots/L1/options", {"thirdGuid": "p1", "rank": 3}, ["rank"]),
        ("lots/L1/options", {"thirdGuid": "p1", "rank": "1"}, ["rank"]),
        ("lots/L1/options", {"thirdGuid": "p1", "rank": True}, ["rank"]),
        ("lots/L1/options", {"thirdGuid": "p 1"}, ["thirdGuid"]),
        ("lots/L1/options", {"thirdGuid": "a/b"}, ["thirdGuid"]),
        ("lots/L1/options", {"thirdGuid": 7}, ["thirdGuid"]),
        ("lots/L1/options", {"thirdGuid": "p1", "extra": 1}, ["extra"]),
        ("lots/L1/options", {"thirdGuid": "x" * 129}, ["thirdGuid"]),
        ("lots/L1/options/1/prolongation", {}, ["until"]),
        ("lots/L1/options/1/prolongation", {"until": "2026-11-30T10:00:00"}, ["until"]),
        ("lots/L1/options/1/prolongation", {"until": "tomorrow"}, ["until"]),
        ("lots/L1/options/1/prolongation", {"until": 1795000000}, ["until"]),
        ("lots/L1/options/x/prolongation", {"until": "2026-11-30T10:00:00Z"}, ["rank"]),
        (
            "lots/L1/prereservation",
            {"thirdGuid": "p1", "price": "12.345", "deposit": -1},
            ["price", "deposit"],
        ),
        ("lots/L1/prereservation", {"thirdGuid": "p1", "price": 1e30, "deposit": 0}, ["price"]),
        ("lots/L1/prereservation", {"thirdGuid": "p1", "price": "NaN", "deposit": 0}, ["price"]),
        ("lots/L1/prereservation/withdrawal", {"thirdGuid": None}, ["thirdGuid"]),
    ],
)
async def test_invalid_values_are_422_with_fields(
    api: Api, rest: str, body: Any, fields: list[str]
) -> None:
    answer = await api.post(
        rest, data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    payload = assert_envelope(answer, 422, "VALIDATION_FAILED")
    assert sorted({e["field"] for e in payload["errors"]}) == sorted(fields)
    assert all(e["message"] for e in payload["errors"])
    assert "x" * 129 not in answer.body.__repr__()  # inputs are not echoed


@pytest.mark.parametrize(
    "query",
    [
        "lots?limit=0",
        "lots?limit=1001",
        "lots?limit=ten",
        "lots?cursor=bm9wZQ",
        "lots?cursor=%%%",
        "lots?modifiedAfter=yesterday",
        "lots?unknown=1",
        "lots?limit=1&limit=2",
        "options?expiringBefore=2026-11-23",
        "lots/L1/availability?source=both",
        "lots/L1?x=1",
    ],
)
async def test_invalid_queries_are_422(api: Api, query: str) -> None:
    assert_envelope(await api.get(query), 422, "VALIDATION_FAILED")


async def test_odd_inputs_never_give_500(api: Api) -> None:
    odd: list[tuple[str, str, Any]] = [
        ("GET", "lots/%00", None),
        ("GET", "lots/" + "é" * 300, None),
        ("GET", "lots/L1/history?", None),
        ("GET", "prospects/%20", None),
        ("POST", "lots/L1/options", {"thirdGuid": "p1", "rank": 10**30}),
        ("POST", "lots/L1/options", {"thirdGuid": {"$gt": ""}}),
        ("POST", "lots/L1/options", [[[[[[[[[[[]]]]]]]]]]]),
        ("POST", "lots/L1/options/99999999999999/prolongation", {"until": "9999-12-31T23:59:59Z"}),
        ("POST", "lots/L1/options/1/prolongation", {"until": "0001-01-01T00:00:00+14:00"}),
        ("DELETE", "lots/L1/options/0", None),
        ("DELETE", "lots/NOPE/options/1?thirdGuid=p1", None),
        ("POST", "lots/L1/prereservation", {"thirdGuid": "p1", "price": "1e400", "deposit": 0}),
    ]
    for method, rest, body in odd:
        answer = await api.call(method, rest, json=body)
        assert answer.status < 500, (method, rest, answer)
        assert answer.headers["X-Request-ID"]


# --------------------------------------------------------------------------- refusals


async def test_local_refusal_carries_koban_code_and_source_local(api: Api) -> None:
    await api.store.sync_status("L2", "blocked", "BLOQUE", T0)
    answer = await api.place("L2", "p1")
    body = assert_envelope(answer, 409, "LOT_NOT_AVAILABLE")
    assert (body["kobanCode"], body["source"]) == ("02", "local")
    unknown = await api.place("NOPE", "p1")
    body = assert_envelope(unknown, 404, "LOT_UNKNOWN")
    assert (body["kobanCode"], body["source"]) == (None, "local")


async def test_koban_refusal_passes_its_code_with_source_koban(api: Api) -> None:
    # Koban has two options the service never heard of.
    api.koban.add_option("L3", "p5", via_api=False)
    api.koban.add_option("L3", "p6", via_api=False)
    answer = await api.place("L3", "p1")
    body = assert_envelope(answer, 409, "LOT_FULL")
    assert (body["kobanCode"], body["source"]) == ("05", "koban")
    # Koban's own Add refusal (an injected 03) passes through the same way.
    api.fault(errorcode="03", methods=["ncOption/Add"], count=1)
    answer = await api.place("L4", "p1")
    body = assert_envelope(answer, 409, "USER_OPTION_LIMIT")
    assert (body["kobanCode"], body["source"]) == ("03", "koban")


async def test_unknown_prospect_in_koban_is_404_prospect_unknown(api: Api) -> None:
    answer = await api.place("L1", "never-created")
    body = assert_envelope(answer, 404, "PROSPECT_UNKNOWN")
    assert body["source"] == "koban"
    lot = await api.store.load("L1")
    assert lot is not None and not lot.intents and not lot.options


async def test_koban_unavailable_is_503_with_retry_after(api: Api) -> None:
    api.fault(status=503, methods=["ncOption/GetLotStatus"], count=1)
    answer = await api.place("L1", "p1")
    body = assert_envelope(answer, 503, "KOBAN_UNAVAILABLE")
    assert body["source"] is None and int(answer.headers["Retry-After"]) > 0
    lot = await api.store.load("L1")
    assert lot is not None and not lot.intents  # the reservation was released


async def test_koban_error_is_502(api: Api) -> None:
    api.koban.api_key = "rotated"  # Koban now answers 401 to our key
    answer = await api.place("L1", "p1")
    assert_envelope(answer, 502, "KOBAN_ERROR")
    availability = await api.get("lots/L1/availability?source=koban")
    assert_envelope(availability, 502, "KOBAN_ERROR")


async def test_koban_outcome_unknown_on_prolong_is_502(api: Api) -> None:
    assert (await api.place("L1", "p1")).status == 201
    api.fault(timeout=True, hang_seconds=2, methods=["ncOption/Prolong"], count=1)
    answer = await api.post("lots/L1/options/1/prolongation", {"until": "2026-11-27T10:00:00Z"})
    assert_envelope(answer, 502, "KOBAN_OUTCOME_UNKNOWN")
    assert b"L1" in await api.store.redis.smembers(api.store.keys.needs_sync)
    assert not api.koban.lots["L1"].options[0].prolonged  # the hang came before applying


async def test_tenant_without_koban_credentials_refuses_writes_503(
    redis: Redis, tenant: str
) -> None:
    t = make_tenant(redis, tenant, FixedClock(T0), koban_api_key=None, koban_user_key=None)
    app = build_api_app(Tenants({tenant: t}), redis)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await t.store.import_lot("L1", T0)
        headers = {"Authorization": "Bearer tok-write"}
        read = await client.get(f"/v1/tenants/{tenant}/lots/L1", headers=headers)
        assert read.status == 200
        write = await client.post(
            f"/v1/tenants/{tenant}/lots/L1/options", json={"thirdGuid": "p1"}, headers=headers
        )
        assert write.status == 503
        assert (await write.json())["errorCode"] == "KOBAN_UNAVAILABLE"
        assert write.headers["Retry-After"]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_down_is_503_store_unavailable(tenant: str) -> None:
    dead = connect(f"redis://127.0.0.1:{_dead_port()}/0", socket_connect_timeout=0.2)
    t = make_tenant(dead, tenant, FixedClock(T0))
    app = build_api_app(Tenants({tenant: t}), dead)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            headers = {"Authorization": "Bearer tok-admin"}
            for method, path, body in (
                ("GET", "lots/L1", None),
                ("GET", "lots", None),
                ("POST", "lots/L1/options", {"thirdGuid": "p1"}),
            ):
                url = f"/v1/tenants/{tenant}/{path}"
                async with client.request(method, url, json=body, headers=headers) as response:
                    assert response.status == 503, path
                    payload = await response.json()
                    assert payload["errorCode"] == "STORE_UNAVAILABLE"
                    assert response.headers["Retry-After"]
    finally:
        await dead.aclose()


# --------------------------------------------------------------------------- request ids, logs


async def test_request_id_is_taken_or_generated_and_on_every_response(api: Api) -> None:
    given = await api.get("lots/L1", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    error = await api.get("lots/NOPE", headers={"X-Request-ID": "req.42"})
    assert error.headers["X-Request-ID"] == "req.42" and error.body["requestId"] == "req.42"
    bad = await api.get("lots/L1", headers={"X-Request-ID": "x" * 300})
    assert bad.headers["X-Request-ID"] != "x" * 300 and len(bad.headers["X-Request-ID"]) == 32
    fresh = [await api.get("lots/L1") for _ in range(2)]
    assert fresh[0].headers["X-Request-ID"] != fresh[1].headers["X-Request-ID"]
    route_404 = await api.call("GET", "/nowhere", raw_path=True, token=None)
    assert route_404.headers["X-Request-ID"] == route_404.body["requestId"]
    webhook = await api.call("GET", f"/koban/{api.name}/option-check?extcode=L1", raw_path=True)
    assert webhook.headers["X-Request-ID"]


async def test_every_log_line_of_a_request_carries_its_id(api: Api) -> None:
    with captured_logs() as logs:
        await api.place("L1", "p1", headers={"X-Request-ID": "trace-1"})
        api.fault(status=503, methods=["ncOption/GetLotStatus"], count=1)
        await api.place("L2", "p1", headers={"X-Request-ID": "trace-2"})
        await api.call("GET", "/koban/x/option-check?extcode=L1&token=s3cret", raw_path=True)
    captured = logs
    access = [e for e in captured if e["event"] == "http_request"]
    assert [e["request_id"] for e in access[:2]] == ["trace-1", "trace-2"]
    assert access[0]["status"] == 201 and access[1]["status"] == 503
    mine = [e for e in captured if e.get("request_id") == "trace-2"]
    assert any(e["event"] == "upstream_failure" for e in mine)
    assert all("s3cret" not in str(e) for e in captured)
    assert all("request_id" in e for e in captured if e["event"] == "http_request")


def test_configure_logging_json_and_console(capsys: pytest.CaptureFixture[str]) -> None:
    saved = structlog.get_config()
    try:
        configure_logging("json", "info")
        with structlog.contextvars.bound_contextvars(request_id="r-1"):
            structlog.get_logger("t").info("hello", n=1)
            structlog.get_logger("t").debug("hidden")
        line = json.loads(capsys.readouterr().err.strip())
        assert line["event"] == "hello" and line["request_id"] == "r-1"
        assert line["level"] == "info" and line["timestamp"].endswith("Z")
        configure_logging("console", "debug")
        structlog.get_logger("t").debug("shown")
        assert "shown" in capsys.readouterr().err
    finally:
        structlog.configure(**saved)


def test_the_access_line_is_the_one_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    """`log_access` skips structlog's dispatch under `configure_logging`'s configuration:
    the same line as through structlog (timestamp aside), nothing below the level, and
    through structlog again once something else is configured (a test's capture)."""
    saved = structlog.get_config()
    try:
        configure_logging("json", "info")
        path = "/v1/tenants/t/lots/L1/availability?token=s3cret&x=1"
        with structlog.contextvars.bound_contextvars(request_id="r-9"):
            log_access("GET", path, 200, 0.001234)
            structlog.get_logger("service.entrypoints.api").info(
                "http_request",
                method="GET",
                path="/v1/tenants/t/lots/L1/availability?token=***&x=1",
                status=200,
                duration_ms=1.23,
            )
        fast, slow = (json.loads(line) for line in capsys.readouterr().err.splitlines())
        assert fast.pop("timestamp").endswith("Z") and slow.pop("timestamp").endswith("Z")
        assert list(fast.items()) == list(slow.items())
        assert fast["request_id"] == "r-9" and "s3cret" not in str(fast)
        configure_logging("json", "warning")
        log_access("GET", "/x", 200, 0.001)
        assert capsys.readouterr().err == ""
        configure_logging("json", "info")
        with captured_logs() as logs:
            log_access("POST", "/y", 201, 0.002)
        assert capsys.readouterr().err == ""
        assert [(e["event"], e["path"], e["status"]) for e in logs] == [("http_request", "/y", 201)]
    finally:
        structlog.configure(**saved)
