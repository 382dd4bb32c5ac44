"""The event schemas over HTTP: ``GET /v1/schemas/events`` (the types) and
``GET /v1/schemas/events/{type}`` (one JSON Schema, `event_schemas`).

Schemas are the same for every tenant, so the path names none: a token of any tenant with
the `read` scope reads them (each CloudEvent's `dataschema` points here).
"""

from __future__ import annotations

from aiohttp import web

from service.entrypoints.api.context import TOKENS_KEY
from service.entrypoints.api.errors import EVENT_TYPE_UNKNOWN, ApiError, json_response
from service.entrypoints.api.event_schemas import EVENT_SCHEMAS, event_schema
from service.entrypoints.api.models import NoQuery, parse_query
from service.storage.events import SCHEMA_PATH

__all__ = ["SCHEMA", "SCHEMAS", "routes"]

SCHEMAS = SCHEMA_PATH.rstrip("/")
SCHEMA = SCHEMA_PATH + "{type}"

routes = web.RouteTableDef()


@routes.get(SCHEMAS)
async def list_schemas(request: web.Request) -> web.Response:
    caller = request.app[TOKENS_KEY].authenticate_any(request, "read")
    parse_query(request, NoQuery)
    base = caller.tenant.store.public_base_url
    return json_response(
        {"types": {t: event_schema(t, base)["$id"] for t in sorted(EVENT_SCHEMAS)}}
    )


@routes.get(SCHEMA)
async def get_schema(request: web.Request) -> web.Response:
    caller = request.app[TOKENS_KEY].authenticate_any(request, "read")
    parse_query(request, NoQuery)
    type_ = request.match_info["type"]
    if type_ not in EVENT_SCHEMAS:
        raise ApiError(404, EVENT_TYPE_UNKNOWN, f"No event type {type_!r}.")
    return json_response(event_schema(type_, caller.tenant.store.public_base_url))
