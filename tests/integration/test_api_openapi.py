"""/openapi.json, /docs, /readyz and /metrics."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from service.entrypoints.api import build_api_app, health
from service.entrypoints.api.health import SCHEDULER_HEARTBEAT_KEY, Metrics, metrics_of
from service.entrypoints.api.openapi import OPERATIONS, Operation, Reply, describe
from service.entrypoints.api.openapi_builder import build_openapi
from service.storage.redis_client import connect
from service.tenancy import Tenants
from tests.support.api_harness import T0, Api, FixedClock, make_tenant, running_api


@pytest.fixture
async def api(redis: Redis, tenant: str) -> AsyncIterator[Api]:
    async with running_api(redis, tenant) as running:
        yield running


async def spec_of(api: Api) -> dict[str, Any]:
    answer = await api.get("/openapi.json", token=None, raw_path=True)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert isinstance(answer.body, dict)
    return answer.body


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    return {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method not in ("HEAD", "*")
    }


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


async def scrape(api: Api) -> str:
    answer = await api.get("/metrics", token=None, raw_path=True)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert isinstance(answer.body, str)
    return answer.body


# --------------------------------------------------------------------------- the document


async def test_openapi_is_valid_3_1_and_lists_every_route(api: Api) -> None:
    spec = await spec_of(api)
    validate(spec)  # openapi-spec-validator: raises on an invalid document
    assert spec["openapi"] == "3.1.0"
    listed = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert listed == app_routes(api.client.server.app)
    undocumented = {
        (m, p)
        for p, item in spec["paths"].items()
        for m, op in item.items()
        if op.get("x-undocumented")
    }
    assert undocumented == set()  # every route of the app is described
    for method, path in OPERATIONS:
        assert (method.lower(), path) in listed, (method, path)
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def test_operations_carry_models_parameters_security_and_the_envelope(api: Api) -> None:
    spec = await spec_of(api)
    schemas = spec["components"]["schemas"]
    lots = spec["paths"]["/v1/tenants/{tenant}/lots"]["get"]
    params = {p["name"]: p for p in lots["parameters"]}
    assert set(params) == {
        "tenant",
        "status",
        "program",
        "expiringBefore",
        "modifiedAfter",
        "limit",
        "cursor",
    }
    assert params["tenant"]["in"] == "path" and params["tenant"]["required"] is True
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    assert params["expiringBefore"]["schema"]["format"] == "date-time"
    assert all("null" not in orjson.dumps(p["schema"]).decode() for p in params.values())
    assert lots["security"] == [{"bearerAuth": []}] and lots["x-scope"] == "read"
    ok = lots["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/LotListOut"}
    for status in ("401", "403", "404", "422", "503"):
        error = lots["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorOut"}
    assert set(schemas["ErrorOut"]["properties"]) == {
        "errorCode",
        "message",
        "kobanCode",
        "source",
        "requestId",
        "errors",
    }
    assert "TENANT_UNKNOWN" in lots["responses"]["404"]["description"]

    place = spec["paths"]["/v1/tenants/{tenant}/lots/{extcode}/options"]["post"]
    body = place["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PlaceOptionIn"}
    assert schemas["PlaceOptionIn"]["required"] == ["thirdGuid"]
    assert schemas["PlaceOptionIn"]["additionalProperties"] is False
    assert set(place["responses"]) >= {"201", "202", "400", "409", "422", "502", "503"}
    assert "LOT_FULL" in place["responses"]["409"]["description"]
    assert any(p["name"] == "Idempotency-Key" for p in place["parameters"])
    assert place["x-scope"] == "write"
    option = schemas["OptionOut"]["properties"]
    assert option["placedAt"] == {"format": "date-time", "title": "Placedat", "type": "string"}

    prolong = spec["paths"]["/v1/tenants/{tenant}/lots/{extcode}/options/{rank}/prolongation"]
    rank = next(p for p in prolong["post"]["parameters"] if p["name"] == "rank")
    assert rank["schema"] == {"type": "integer", "minimum": 1, "maximum": 2}

    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert spec["paths"][path]["get"]["security"] == []
    assert spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/ReadyOut"}

    hook = spec["paths"]["/koban/{tenant}/option-placed"]["post"]
    form = hook["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["Deal_Extcode", "Third_Guid", "ExpDate"]
    assert form["properties"]["Rank"]["enum"] == [1, 2]
    assert hook["security"] == [{"kobanWebhookHeader": []}, {"kobanWebhookQuery": []}]
    refused = hook["responses"]["401"]["content"]["application/json"]["schema"]
    assert refused == {"$ref": "#/components/schemas/WebhookErrorOut"}
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }


async def test_described_and_undescribed_routes(redis: Redis, tenant: str) -> None:
    t = make_tenant(redis, tenant, FixedClock(T0))
    app = build_api_app(Tenants({tenant: t}), redis, webhooks=False)

    async def extra(request: web.Request) -> web.Response:
        """Something new."""
        return web.json_response({})

    app.router.add_get("/extra/{thing}", extra)
    app.router.add_post("/described", extra)
    describe("POST", "/described", Operation("Described", "misc", {200: Reply(None, "ok")}))
    try:
        spec = build_openapi(app)
    finally:
        del OPERATIONS[("POST", "/described")]
    validate(spec)
    undescribed = spec["paths"]["/extra/{thing}"]["get"]
    assert undescribed["x-undocumented"] is True and undescribed["description"] == "Something new."
    assert undescribed["parameters"][0]["name"] == "thing"
    described = spec["paths"]["/described"]["post"]
    assert described["summary"] == "Described" and "x-undocumented" not in described
    assert "/koban/{tenant}/option-placed" not in spec["paths"]  # not routes of this app


async def test_docs_page_is_the_vendored_explorer_of_this_document(api: Api) -> None:
    answer = await api.get("/docs", token=None, raw_path=True)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/html")
    page = answer.body
    assert page.startswith("<!doctype html>")
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    assert '<script src="/ui/static/vendor/swagger-ui/swagger-ui-bundle.js">' in page
    assert "script-src 'self';" in answer.headers["Content-Security-Policy"]
    init = await api.get("/ui/static/docs-init.js", token=None, raw_path=True)
    assert init.status == 200 and 'url: "/openapi.json"' in init.body
    assert "queryConfigEnabled: false" in init.body
    spec = await spec_of(api)
    assert "§" not in orjson.dumps(spec).decode()  # it cites no section of a text outside the repo


# --------------------------------------------------------------------------- readiness


async def test_readyz_reports_redis_and_the_scheduler_heartbeat(api: Api) -> None:
    answer = await api.get("/readyz", token=None, raw_path=True)
    assert answer.status == 200
    assert answer.body["status"] == "ready" and answer.body["redis"]["ok"] is True
    assert answer.body["scheduler"] is None  # no scheduler has written a heartbeat
    beat = time.time() - 42
    redis = api.store.redis
    await redis.set(SCHEDULER_HEARTBEAT_KEY, str(beat))
    try:
        answer = await api.get("/readyz", token=None, raw_path=True)
    finally:
        await redis.delete(SCHEDULER_HEARTBEAT_KEY)
    assert answer.status == 200
    assert 41 <= answer.body["scheduler"]["ageSeconds"] < 60
    assert answer.body["scheduler"]["lastBeat"].endswith("Z")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_readyz_is_503_and_metrics_still_answer_when_redis_is_down(tenant: str) -> None:
    dead = connect(f"redis://127.0.0.1:{_dead_port()}/0", socket_connect_timeout=0.2)
    t = make_tenant(dead, tenant, FixedClock(T0))
    app = build_api_app(Tenants({tenant: t}), dead, webhooks=False)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            async with client.get("/readyz") as response:
                assert response.status == 503
                body = await response.json()
            assert body["status"] == "unavailable" and body["redis"]["ok"] is False
            assert body["redis"]["error"] and body["scheduler"] is None
            async with client.get("/metrics") as response:
                assert response.status == 200
                text = await response.text()
            assert samples(text, "koban_options_redis_up") == {(): 0.0}
    finally:
        await dead.aclose()


# --------------------------------------------------------------------------- metrics


async def test_metrics_count_requests_koban_calls_options_sweeps_and_drift(api: Api) -> None:
    tenant = api.name
    redis = api.store.redis
    events = api.store.keys.events
    assert (await api.place("L1", "p1")).status == 201
    assert (await api.get("lots/L1")).status == 200
    assert (await api.get("lots/NOPE")).status == 404
    assert (await api.get("/nowhere/at/all", raw_path=True)).status == 404
    assert (await api.call("PROPFIND", "lots/L1")).status == 405
    await redis.xadd(events, {"ce": orjson.dumps({"type": "koban.sync.drift_detected"})})
    await redis.xadd(events, {"ce": b"not json"})
    metrics_of(api.client.server.app).observe_sweep(tenant, 0.3)

    text = await scrape(api)
    requests = samples(text, "koban_options_http_requests_total")
    lot = "/v1/tenants/{tenant}/lots/{extcode}"
    assert requests[labels(route=lot, method="GET", status="200")] == 1
    assert requests[labels(route=lot, method="GET", status="404")] == 1
    assert requests[labels(route="unmatched", method="GET", status="404")] == 1
    assert requests[labels(route="unmatched", method="other", status="405")] == 1
    assert requests[labels(route=lot + "/options", method="POST", status="201")] == 1
    calls = samples(text, "koban_options_koban_calls_total")
    assert calls[labels(tenant=tenant, method="Add", outcome="ok")] >= 1
    active = samples(text, "koban_options_active_options")
    assert active[labels(tenant=tenant)] == 1
    sweeps = samples(text, "koban_options_sweep_duration_seconds_count")
    assert sweeps[labels(tenant=tenant)] == 1
    drift = samples(text, "koban_options_drift_detected_total")
    assert drift[labels(tenant=tenant)] == 1
    assert samples(text, "koban_options_redis_up") == {(): 1.0}

    await redis.xadd(events, {"ce": orjson.dumps({"type": "koban.sync.drift_detected"})})
    text = await scrape(api)
    assert samples(text, "koban_options_drift_detected_total")[labels(tenant=tenant)] == 2
    # The app's own registry: nothing leaks into the process-global one.
    assert b"koban_options_" not in generate_latest(REGISTRY)


async def test_drift_is_counted_from_the_start_on_in_bounded_batches(
    redis: Redis, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_tenant(redis, tenant, FixedClock(T0))
    key = t.store.keys.events
    drift = {"ce": orjson.dumps({"type": "koban.sync.drift_detected"})}
    await redis.xadd(key, drift, id="1000-0")  # before the start: not counted
    metrics = Metrics(Tenants({tenant: t}), started_ms=2000)
    for _ in range(5):
        await redis.xadd(key, drift)
    await redis.xadd(key, {"ce": orjson.dumps({"type": "koban.option.placed"})})
    monkeypatch.setattr(health, "DRIFT_SCAN_BATCH", 2)
    monkeypatch.setattr(health, "DRIFT_SCAN_BUDGET", 4)
    await metrics.refresh()
    counted = samples(metrics.exposition().decode(), "koban_options_drift_detected_total")
    assert counted[labels(tenant=tenant)] == 4  # the budget: the rest next scrape
    await metrics.refresh()
    counted = samples(metrics.exposition().decode(), "koban_options_drift_detected_total")
    assert counted[labels(tenant=tenant)] == 5


def test_request_figures_expose_as_prometheus_classes_would() -> None:
    """The API's request counter and histogram (plain numbers, `health._Requests`) give
    the exposition a prometheus_client `Counter` + `Histogram` give for the same
    requests, sample for sample (creation times aside)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests = Counter(
        "koban_options_http_requests",
        health._Requests.COUNT_HELP,
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "koban_options_http_request_duration_seconds",
        health._Requests.LATENCY_HELP,
        ["route", "method"],
        registry=registry,
    )
    ours = Metrics(Tenants({}), started_ms=0)
    seen = [
        ("/v1/tenants/{tenant}/lots/{extcode}", "GET", 200, 0.0004),
        ("/v1/tenants/{tenant}/lots/{extcode}", "GET", 200, 0.005),  # on a bound
        ("/v1/tenants/{tenant}/lots/{extcode}", "GET", 404, 0.012),
        ("unmatched", "other", 405, 0.0),
        ("/v1/tenants/{tenant}/lots/{extcode}/options", "POST", 201, 0.75),
        ("/v1/tenants/{tenant}/lots/{extcode}/options", "POST", 201, 42.0),  # beyond 10 s
    ]
    for route, method, status, seconds in seen:
        requests.labels(route=route, method=method, status=str(status)).inc()
        latency.labels(route=route, method=method).observe(seconds)
        ours.observe_request(route, method, status, seconds)

    def figures(text: str) -> list[tuple[str, str, tuple[tuple[str, str], ...], float]]:
        out = []
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("koban_options_http_request"):
                continue
            for s in family.samples:
                value = -1.0 if s.name.endswith("_created") else s.value
                out.append((family.documentation, s.name, tuple(sorted(s.labels.items())), value))
        return sorted(out)

    expected = figures(generate_latest(registry).decode())
    assert len(expected) == 2 * 4 + 3 * (15 + 3)  # counts + created; buckets, count, sum, created
    assert figures(ours.exposition().decode()) == expected
