"""The event schemas over HTTP: ``GET /v1/schemas/events`` (the types) and
``GET /v1/schemas/events/{type}`` (one JSON Schema, `event_schemas`).

Schemas are the same for every tenant, so the path names none: a token of any tenant with
the `read` scope reads them (each CloudEvent's `dataschema` points here).
"""

from __future__ import annotations

from aiohttp import web

from service.entrypoints.api.context import TOKENS_KEY
from service.entrypoints.api.errors import EVENT_TYPE_UNKNOWN, ApiError, json_response
from service.entrypoints.api.models import NoQuery
from service.entrypoints.api.openapi import (
    AUTH_ERRORS,
    JSON,
    READ,
    Operation,
    Reply,
    documented,
    merge,
)
from service.event_schemas import EVENT_SCHEMAS, event_schema
from service.storage.events import SCHEMA_PATH

__all__ = ["SCHEMA", "SCHEMAS", "routes"]

SCHEMAS = SCHEMA_PATH.rstrip("/")
SCHEMA = SCHEMA_PATH + "{type}"

routes = web.RouteTableDef()

# Not tenant-scoped: no 404 TENANT_UNKNOWN, no store behind them.
_SCHEMA_ERRORS = {k: v for k, v in AUTH_ERRORS.items() if k not in (404, 503)}
_ANY_TENANT = "A token of any tenant with the `read` scope reads them."

LIST_SCHEMAS = Operation(
    "The event types and the URI of each one's JSON Schema",
    "events",
    {
        200: Reply(
            None,
            "`types`: each event type and its schema's URI (its `dataschema`).",
            JSON,
            {
                "type": "object",
                "required": ["types"],
                "properties": {
                    "types": {
                        "type": "object",
                        "additionalProperties": {"type": "string", "format": "uri"},
                    }
                },
            },
        )
    },
    _SCHEMA_ERRORS,
    scope=READ,
    query=NoQuery,
    description=_ANY_TENANT,
)

GET_SCHEMA = Operation(
    "The JSON Schema (2020-12) of one event type's `data`",
    "events",
    {
        200: Reply(
            None, "The schema; its `$id` is the events' `dataschema`.", JSON, {"type": "object"}
        )
    },
    merge(_SCHEMA_ERRORS, {404: [EVENT_TYPE_UNKNOWN]}),
    scope=READ,
    query=NoQuery,
    path_schemas={"type": {"type": "string", "enum": sorted(EVENT_SCHEMAS)}},
    description=_ANY_TENANT,
)


@routes.get(SCHEMAS)
@documented(LIST_SCHEMAS)
async def list_schemas(request: web.Request) -> web.Response:
    caller = request.app[TOKENS_KEY].authenticate_any(request, "read")
    LIST_SCHEMAS.parse_query(request)
    base = caller.tenant.store.public_base_url
    return json_response(
        {"types": {t: event_schema(t, base)["$id"] for t in sorted(EVENT_SCHEMAS)}}
    )


@routes.get(SCHEMA)
@documented(GET_SCHEMA)
async def get_schema(request: web.Request) -> web.Response:
    caller = request.app[TOKENS_KEY].authenticate_any(request, "read")
    GET_SCHEMA.parse_query(request)
    type_ = request.match_info["type"]
    if type_ not in EVENT_SCHEMAS:
        raise ApiError(404, EVENT_TYPE_UNKNOWN, f"No event type {type_!r}.")
    return json_response(event_schema(type_, caller.tenant.store.public_base_url))
