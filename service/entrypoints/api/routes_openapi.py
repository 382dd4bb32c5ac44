"""``GET /openapi.json``, built on first request and kept (the router is frozen by then);
``/docs``, its interactive explorer, is `service.entrypoints.ui`'s. Importing this module
also registers the descriptions of the routes whose handlers are described from outside
(`openapi_webhooks`, `openapi_health`)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.entrypoints.api import openapi_health, openapi_webhooks
from service.entrypoints.api.openapi import JSON, Operation, Reply, documented
from service.entrypoints.api.openapi_builder import build_openapi

__all__ = ["install_openapi"]

# Loaded for their `describe` calls.
_DESCRIBED_ELSEWHERE = (openapi_health, openapi_webhooks)


class _Cache:
    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.body: bytes | None = None


_CACHE_KEY = web.AppKey("api_openapi_cache", _Cache)


def _spec(request: web.Request) -> tuple[dict[str, Any], _Cache]:
    cache = request.app[_CACHE_KEY]
    if cache.spec is None:
        cache.spec = build_openapi(request.app)
    return cache.spec, cache


@documented(
    Operation(
        "This document",
        "operations",
        {200: Reply(None, "OpenAPI 3.1.", JSON, {"type": "object"})},
        auth="none",
    )
)
async def openapi_json(request: web.Request) -> web.Response:
    spec, cache = _spec(request)
    if cache.body is None:
        cache.body = orjson.dumps(spec)
    return web.Response(body=cache.body, content_type=JSON)


def install_openapi(app: web.Application) -> None:
    """Register ``GET /openapi.json`` on `app`."""
    app[_CACHE_KEY] = _Cache()
    app.router.add_get("/openapi.json", openapi_json)
