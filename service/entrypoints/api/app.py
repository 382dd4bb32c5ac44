"""Composition of the API app: tenants, tokens, Koban clients, middlewares and routes.

``build_api_app(settings_or_tenants, redis, ...)`` serves the internal API under
``/v1/tenants/{t}/…``, Koban's webhooks under ``/koban/{t}/…`` (unless ``webhooks=False``)
and ``GET /healthz``. One middleware: request id, error envelope, metrics, access log. The
Koban HTTP session lives in the app's ``cleanup_ctx`` (on the serving loop, closed on
shutdown), with a `KobanClient` and an `OptionFlows` per tenant with Koban credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from service.bootstrap import KobanFactory, build_tenants, koban_from_settings
from service.clock import Clock
from service.config import Settings
from service.entrypoints.api.answers import AvailabilityAnswers
from service.entrypoints.api.auth import TokenIndex
from service.entrypoints.api.context import (
    FLOWS_KEY,
    KOBAN_SETTINGS_KEY,
    TENANTS_KEY,
    TOKENS_KEY,
    FlowSettings,
    KobanPool,
)
from service.entrypoints.api.errors import json_response
from service.entrypoints.api.health import install_health
from service.entrypoints.api.middleware import api_middleware
from service.entrypoints.api.models import MAX_BODY
from service.entrypoints.api.routes_clock import install_clock
from service.entrypoints.api.routes_denonciations import routes as denonciation_routes
from service.entrypoints.api.routes_events import close_event_streams, close_stream_clients
from service.entrypoints.api.routes_events import routes as event_routes
from service.entrypoints.api.routes_leads import routes as lead_routes
from service.entrypoints.api.routes_lots import ANSWERS, hot_routes
from service.entrypoints.api.routes_lots import routes as lot_routes
from service.entrypoints.api.routes_openapi import install_openapi
from service.entrypoints.api.routes_options import routes as option_routes
from service.entrypoints.api.routes_prereservation_validated import (
    routes as validated_prereservation_routes,
)
from service.entrypoints.api.routes_programmes import routes as programme_routes
from service.entrypoints.api.routes_prospects import routes as prospect_routes
from service.entrypoints.api.routes_schemas import routes as schema_routes
from service.entrypoints.api.routes_subscriptions import install_subscriptions
from service.entrypoints.api.routes_sync import install_sync
from service.entrypoints.api.throttle import needs_throttle, throttle_middleware
from service.entrypoints.koban_lead_webhook import add_lead_webhook
from service.entrypoints.koban_webhooks import add_webhook_routes
from service.entrypoints.ui.install import install_ui
from service.storage.redis_client import RedisClient
from service.telemetry import tracing_enabled, tracing_middleware
from service.tenancy import Tenants
from service.usecases.ticking import ClockHook

__all__ = ["REDIS_KEY", "build_api_app"]

REDIS_KEY = web.AppKey[RedisClient]("api_redis")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def build_api_app(
    source: Settings | Tenants,
    redis: RedisClient,
    *,
    koban_factory: KobanFactory | None = None,
    clock: Clock | None = None,
    flow_settings: FlowSettings | None = None,
    webhooks: bool = True,
    on_clock_advanced: ClockHook | None = None,
) -> web.Application:
    """The API app for `source` (a configuration, or tenants already built on `redis`).

    `clock` is the base clock when tenants are built here (sandbox tenants get a test
    clock on top of it). `on_clock_advanced(tenant, now)` is called after a sandbox
    tenant's test clock moved through ``POST …/clock`` (and its ticks ran): ``run`` makes
    the tenant's Koban sandbox follow the same clock with it."""
    tenants = source if isinstance(source, Tenants) else build_tenants(source, redis, clock)
    factory = koban_factory or koban_from_settings
    middlewares: list[Middleware] = [api_middleware]
    if needs_throttle(tenants):
        middlewares.append(throttle_middleware)
    if tracing_enabled():  # outermost: the span covers the envelope and the final status
        middlewares.insert(0, tracing_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[TENANTS_KEY] = tenants
    app[TOKENS_KEY] = TokenIndex(tenants)
    app[REDIS_KEY] = redis
    app[KOBAN_SETTINGS_KEY] = flow_settings or FlowSettings()
    app[FLOWS_KEY] = KobanPool()
    app[ANSWERS] = AvailabilityAnswers()

    async def koban_clients(app: web.Application) -> AsyncIterator[None]:
        pool = app[FLOWS_KEY]
        async with aiohttp.ClientSession() as session:
            for tenant in tenants.values():
                client = factory(tenant, session)
                if client is not None:
                    pool.add(tenant, client, app[KOBAN_SETTINGS_KEY])
            try:
                yield
            finally:
                pool.clients.clear()
                pool.flows.clear()

    app.cleanup_ctx.append(koban_clients)
    app.add_routes(hot_routes)  # first: see `routes_lots.hot_routes`
    app.router.add_get("/healthz", healthz)
    app.add_routes(lot_routes)
    app.add_routes(option_routes)
    app.add_routes(event_routes)
    app.add_routes(schema_routes)
    app.add_routes(prospect_routes)
    app.add_routes(denonciation_routes)
    app.add_routes(lead_routes)
    app.add_routes(validated_prereservation_routes)
    app.add_routes(programme_routes)
    install_sync(app)
    install_clock(app, on_clock_advanced)
    install_subscriptions(app)
    app.on_shutdown.append(close_event_streams)
    app.on_cleanup.append(close_stream_clients)
    if webhooks:
        add_lead_webhook(app, tenants)  # first: the webhooks end with a catch-all route
        add_webhook_routes(app, tenants)
    install_health(app, redis, tenants)
    install_openapi(app)
    install_ui(app, redis)
    return app
