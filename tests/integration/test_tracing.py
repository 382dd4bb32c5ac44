"""OpenTelemetry: off by default (nothing patched); on, a placement is one trace across the
API's server span, the Koban calls and the Redis commands (SDK in-memory exporter), and
the prospect lookup's e-mail stays out of its span."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from service.telemetry import disable_tracing, enable_tracing, tracing_enabled
from tests.support.api_harness import running_api


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    enable_tracing(provider)
    try:
        yield spans
    finally:
        disable_tracing()


def _is_redis(attributes: object) -> bool:
    attrs = dict(attributes or {})  # type: ignore[call-overload]
    return "redis" in (attrs.get("db.system"), attrs.get("db.system.name"))


async def test_a_placement_is_one_trace_across_api_koban_and_redis(
    redis: Redis, tenant: str, exporter: InMemorySpanExporter
) -> None:
    async with running_api(redis, tenant) as api:
        exporter.clear()
        answer = await api.place("L1", "p1")
        assert answer.status == 201, answer.body
    spans = exporter.get_finished_spans()
    server = [
        s
        for s in spans
        if s.kind == SpanKind.SERVER
        and s.name == "POST /v1/tenants/{tenant}/lots/{extcode}/options"
    ]
    assert len(server) == 1
    trace_id = server[0].context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    koban = [
        s
        for s in in_trace
        if s.kind == SpanKind.CLIENT and "ncOption" in str(dict(s.attributes or {}).values())
    ]
    assert len(koban) >= 2  # GetLotStatus, then Add
    assert any(_is_redis(s.attributes) for s in in_trace)
    assert server[0].attributes["http.response.status_code"] == 201


async def test_the_lookup_s_e_mail_is_not_in_its_span(
    redis: Redis, tenant: str, exporter: InMemorySpanExporter
) -> None:
    async with running_api(redis, tenant) as api:
        body = {"programme": "HAR", "prospect": {"lastName": "P1", "email": "p1@x.fr"}}
        answer = await api.post("denonciations", body)
        assert answer.status == 201 and answer.body["thirdGuid"] == "p1", answer.body
    attributes = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    lookups = [a for a in attributes if "GetOneByKey" in str(a.values())]
    assert lookups and "key=REDACTED" in str(lookups[0].values())
    assert "p1@x.fr" not in repr(attributes) and "p1%40x.fr" not in repr(attributes)


async def test_tracing_is_off_by_default_and_patches_nothing() -> None:
    assert not tracing_enabled()
    async with aiohttp.ClientSession() as session:
        assert not session.trace_configs  # the aiohttp instrumentation adds one
    assert not hasattr(Redis.execute_command, "__wrapped__")
