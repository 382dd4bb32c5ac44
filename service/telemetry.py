"""OpenTelemetry traces, an optional extra (`pip install 'koban-options[otel]'`), off by
default: off, nothing is patched and no middleware is added, so the hot path is as fast
as without the extra.

On (`tracing = true` in the configuration, or `enable_tracing()` in tests), a request to
the API is a server span; the Koban calls it makes (aiohttp client) and its Redis commands
(redis-py) are child spans of the same trace. The exporter is OTLP over HTTP, configured
by the standard `OTEL_EXPORTER_OTLP_*` variables. The shared-connection fast reader is
left out while tracing (its reads go through redis-py, which is traced).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from service.koban.wire.accounts import LOOKUP_KEY_PARAM

__all__ = ["disable_tracing", "enable_tracing", "tracing_enabled", "tracing_middleware"]

_provider: Any | None = None  # the TracerProvider while tracing is on


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the `otel` extra is not installed."""


def tracing_enabled() -> bool:
    return _provider is not None


def enable_tracing(provider: Any | None = None, service_name: str = "koban-options") -> None:
    """Trace from now on: `provider` (an SDK `TracerProvider`; tests pass one with an
    in-memory exporter), else one exporting OTLP over HTTP. Idempotent."""
    global _provider
    if _provider is not None:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError as exc:
        raise TracingUnavailable(
            "tracing needs the otel extra: pip install 'koban-options[otel]'"
        ) from exc
    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider, url_filter=_span_url)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _provider = provider


def _span_url(url: URL) -> str:
    """An outgoing call's URL as its span records it: the value of Koban's guessed lookup
    `key` (a prospect's e-mail) is replaced, as contact details never leave for traces."""
    if LOOKUP_KEY_PARAM in url.query:
        url = url.update_query({LOOKUP_KEY_PARAM: "REDACTED"})
    return str(url)


def disable_tracing() -> None:
    """Undo `enable_tracing` (tests): the libraries are unpatched."""
    global _provider
    if _provider is None:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AioHttpClientInstrumentor().uninstrument()
    RedisInstrumentor().uninstrument()
    _provider = None


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One server span per request, continuing a caller's trace (`traceparent`)."""
    from opentelemetry import propagate, trace

    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    tracer = trace.get_tracer("koban-options.api", tracer_provider=_provider)
    with tracer.start_as_current_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
    ) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response
