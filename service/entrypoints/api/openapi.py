"""OpenAPI 3.1 of the app (``GET /openapi.json``) and a browsable page (``GET /docs``).

The document is built from the app's router and from the pydantic models that validate
the requests and shape the answers (``pydantic.json_schema.models_json_schema`` with the
ref template ``#/components/schemas/{model}``), so it cannot drift from the code:

* every route of the app is a path (``HEAD`` twins and the webhooks' ``*`` catch-all
  aside); what the router cannot tell — the query and body models, the answers, the error
  codes per status, the scope — comes from `OPERATIONS`, keyed by (method, template).
  Modules that add routes describe them with `describe`; a route nobody described is
  still listed, with its path parameters and the error envelope, and marked
  ``x-undocumented: true`` (tests list such routes);
* query models become one query parameter per field (by alias; ``null`` is not a query
  value, so optional fields lose their ``null`` branch); JSON bodies reference their model;
  Koban's webhook forms are ``application/x-www-form-urlencoded`` from their form models;
* every documented error status answers the error envelope (`ErrorOut`, or
  `WebhookErrorOut` under ``/koban``), its description listing the codes it may carry;
  every answer carries ``X-Request-ID``;
* security: ``bearerAuth`` (HTTP bearer) on ``/v1`` (the scope is in ``x-scope`` and the
  description), Koban's webhook secret in the header ``X-Koban-Webhook-Token`` or the
  query ``token`` under ``/koban``; ``/healthz``, ``/readyz``, ``/metrics``,
  ``/openapi.json`` and ``/docs`` have none.

The document is built on first request and kept (the router is frozen by then).
"""

from __future__ import annotations

import copy
import html
import importlib.metadata
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import AliasGenerator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service.config import TENANT_NAME_PATTERN
from service.entrypoints.api import errors as e
from service.entrypoints.api.event_schemas import EVENT_SCHEMAS
from service.entrypoints.api.health import HealthOut, ReadyOut
from service.entrypoints.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from service.entrypoints.api.idempotency import MAX_KEY_LENGTH, REPLAYED_HEADER
from service.entrypoints.api.logging import REQUEST_ID_HEADER
from service.entrypoints.api.models import (
    AvailabilityOut,
    AvailabilityQuery,
    CancelQuery,
    HistoryOut,
    LotListOut,
    LotOut,
    LotsQuery,
    NoQuery,
    OptionListOut,
    OptionOut,
    OptionsQuery,
    PendingOut,
    PlaceOptionIn,
    PrereserveIn,
    ProlongIn,
    ProspectOut,
    WithdrawIn,
)
from service.entrypoints.api.routes_clock import CLOCK, AdvanceClockIn, ClockAdvancedOut, ClockOut
from service.entrypoints.api.routes_events import (
    EVENTS,
    EVENTS_EXPIRED,
    EventPageOut,
    EventsQuery,
    StreamQuery,
)
from service.entrypoints.api.routes_lots import BASE, LOT
from service.entrypoints.api.routes_schemas import SCHEMA, SCHEMAS
from service.entrypoints.api.routes_sync import (
    SYNC,
    SYNC_IN_PROGRESS,
    SyncIn,
    SyncStartedOut,
    SyncStatusOut,
)
from service.koban import webhook_forms as forms
from service.koban.webhook_forms import (
    MAX_IDENTIFIER,
    OptionCancelledForm,
    OptionExpiredForm,
    OptionPlacedForm,
    OptionProlongedForm,
    ReservationValidatedForm,
    ReservationWithdrawnForm,
)
from service.usecases.koban_webhooks import TOKEN_HEADER, TOKEN_QUERY
from statecharts.errors import HTTP_STATUS, ErrorCode

__all__ = [
    "OPERATIONS",
    "ErrorOut",
    "Operation",
    "Reply",
    "build_openapi",
    "describe",
    "docs_html",
    "install_openapi",
]

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
REF = "#/components/schemas/{model}"
_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE")


# --------------------------------------------------------------------------- envelopes


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=AliasGenerator(serialization_alias=to_camel))


class FieldErrorOut(_Camel):
    field: str
    message: str


class ErrorOut(_Camel):
    """The API's error envelope (service.entrypoints.api.errors)."""

    error_code: str
    message: str
    koban_code: str | None
    source: Literal["local", "koban"] | None
    request_id: str
    errors: list[FieldErrorOut]


class WebhookErrorBody(BaseModel):
    message: str
    code: str


class WebhookErrorOut(BaseModel):
    """A refused webhook (service.usecases.koban_webhooks)."""

    success: Literal[False]
    error: WebhookErrorBody


class WebhookOkOut(BaseModel):
    success: Literal[True]


class OptionCheckOut(BaseModel):
    """Koban's pre-check before it places an option."""

    status: bool
    rank: int | None


# --------------------------------------------------------------------------- the registry

Auth = Literal["bearer", "webhook", "none"]


@dataclass(frozen=True)
class Reply:
    """A success answer: its model (None: no JSON schema), description and media type."""

    model: type[BaseModel] | None
    description: str
    media_type: str = JSON
    schema: Mapping[str, Any] | None = None  # when there is no model


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    errors: Mapping[int, Sequence[str]] = field(default_factory=dict)
    auth: Auth = "bearer"
    scope: str | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_media: str = JSON
    idempotent: bool = False
    path_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra_query: Sequence[Mapping[str, Any]] = ()
    description: str | None = None


OPERATIONS: dict[tuple[str, str], Operation] = {}


def describe(method: str, path: str, operation: Operation) -> None:
    """Document the route (`method`, aiohttp template `path`) in /openapi.json."""
    OPERATIONS[(method.upper(), path)] = operation


# --------------------------------------------------------------------------- error catalogue


def _rules(*codes: ErrorCode) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for code in codes:
        out.setdefault(HTTP_STATUS[code], []).append(code.value)
    return out


def _merge(*parts: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for part in parts:
        for status, codes in part.items():
            bucket = out.setdefault(status, [])
            bucket.extend(c for c in codes if c not in bucket)
    return dict(sorted(out.items()))


_AUTH = {
    401: [e.UNAUTHENTICATED],
    403: [e.FORBIDDEN],
    404: [e.TENANT_UNKNOWN],
    422: [e.VALIDATION_FAILED],
    503: [e.STORE_UNAVAILABLE],
}
_KOBAN = {502: [e.KOBAN_ERROR], 503: [e.KOBAN_UNAVAILABLE]}
_WRITE = _merge(
    _AUTH,
    _KOBAN,
    {
        400: [e.MALFORMED_REQUEST],
        409: [e.IDEMPOTENCY_IN_PROGRESS],
        422: [e.IDEMPOTENCY_KEY_REUSED],
        502: [e.KOBAN_OUTCOME_UNKNOWN],
    },
)
_OPTION_RULES = _rules(
    ErrorCode.LOT_UNKNOWN,
    ErrorCode.OPTION_NOT_FOUND,
    ErrorCode.OPTION_MOVED,
    ErrorCode.PROSPECT_UNKNOWN,
)

_WEBHOOK_ERRORS = {
    400: ["MALFORMED_REQUEST"],
    401: ["UNAUTHENTICATED"],
    404: ["TENANT_UNKNOWN"],
    503: ["STORE_UNAVAILABLE", "STORE_BUSY"],
}

_RANK = {"type": "integer", "minimum": 1, "maximum": 2}
_READ, _WRITE_SCOPE = "read", "write"


def _register_builtin() -> None:
    lots, options, ops, hooks = "lots", "options", "operations", "koban webhooks"
    events = "events"
    describe(
        "GET",
        LOT,
        Operation(
            "The lot: status, state path, options, préréservation, next tick",
            lots,
            {200: Reply(LotOut, "The lot (lazy expiry applied).")},
            _merge(_AUTH, _rules(ErrorCode.LOT_UNKNOWN)),
            scope=_READ,
            query=NoQuery,
        ),
    )
    describe(
        "GET",
        LOT + "/availability",
        Operation(
            "GetLotStatus mirror, with prospect rules and optional Koban comparison",
            lots,
            {200: Reply(AvailabilityOut, "Whether an option can be placed now.")},
            _merge(_AUTH, _KOBAN),
            scope=_READ,
            query=AvailabilityQuery,
        ),
    )
    describe(
        "GET",
        BASE + "/lots",
        Operation(
            "Lots, paginated by last modification",
            lots,
            {200: Reply(LotListOut, "A page of lots and the cursor of the next one.")},
            _AUTH,
            scope=_READ,
            query=LotsQuery,
        ),
    )
    describe(
        "GET",
        LOT + "/history",
        Operation(
            "The lot's events, oldest first",
            lots,
            {200: Reply(HistoryOut, "The lot's CloudEvents.")},
            _merge(_AUTH, _rules(ErrorCode.LOT_UNKNOWN)),
            scope=_READ,
            query=NoQuery,
        ),
    )
    describe(
        "GET",
        BASE + "/options",
        Operation(
            "Active options across lots, soonest expiry first",
            options,
            {200: Reply(OptionListOut, "A page of options and the cursor of the next one.")},
            _AUTH,
            scope=_READ,
            query=OptionsQuery,
        ),
    )
    describe(
        "GET",
        BASE + "/prospects/{third}",
        Operation(
            "A prospect's active options, pending placements and remaining allowance",
            options,
            {200: Reply(ProspectOut, "The prospect's options.")},
            _AUTH,
            scope=_READ,
            query=NoQuery,
        ),
    )
    describe(
        "POST",
        LOT + "/options",
        Operation(
            "Place an option through Koban",
            options,
            {
                201: Reply(OptionOut, "Placed."),
                202: Reply(PendingOut, "Sent to Koban, outcome pending (SPEC §4)."),
            },
            _merge(
                _WRITE,
                _rules(
                    ErrorCode.LOT_UNKNOWN,
                    ErrorCode.PROSPECT_UNKNOWN,
                    ErrorCode.LOT_NOT_AVAILABLE,
                    ErrorCode.LOT_PRERESERVED,
                    ErrorCode.LOT_FULL,
                    ErrorCode.PROSPECT_ALREADY_HOLDS,
                    ErrorCode.PROSPECT_OPTION_LIMIT,
                    ErrorCode.USER_OPTION_LIMIT,
                    ErrorCode.RANK_NOT_AVAILABLE,
                ),
                {409: [e.PLACEMENT_NOT_MADE]},
            ),
            scope=_WRITE_SCOPE,
            body=PlaceOptionIn,
            idempotent=True,
        ),
    )
    describe(
        "POST",
        LOT + "/options/{rank}/prolongation",
        Operation(
            "Prolong the option at a rank through Koban",
            options,
            {200: Reply(OptionOut, "The prolonged option.")},
            _merge(
                _WRITE,
                _OPTION_RULES,
                _rules(
                    ErrorCode.ALREADY_PROLONGED,
                    ErrorCode.PROLONGATION_NOT_LATER,
                    ErrorCode.PROLONGATION_TOO_LONG,
                ),
            ),
            scope=_WRITE_SCOPE,
            body=ProlongIn,
            idempotent=True,
            path_schemas={"rank": _RANK},
        ),
    )
    describe(
        "DELETE",
        LOT + "/options/{rank}",
        Operation(
            "Cancel the option at a rank through Koban",
            options,
            {200: Reply(OptionOut, "The ended option.")},
            _merge(_WRITE, _OPTION_RULES),
            scope=_WRITE_SCOPE,
            query=CancelQuery,
            idempotent=True,
            path_schemas={"rank": _RANK},
        ),
    )
    describe(
        "POST",
        LOT + "/prereservation",
        Operation(
            "Pre-reserve the lot through Koban",
            lots,
            {201: Reply(LotOut, "The pre-reserved lot.")},
            _merge(
                _WRITE,
                _rules(
                    ErrorCode.LOT_UNKNOWN,
                    ErrorCode.PROSPECT_UNKNOWN,
                    ErrorCode.LOT_NOT_AVAILABLE,
                    ErrorCode.LOT_PRERESERVED,
                ),
            ),
            scope=_WRITE_SCOPE,
            body=PrereserveIn,
            idempotent=True,
        ),
    )
    describe(
        "POST",
        LOT + "/prereservation/withdrawal",
        Operation(
            "Withdraw the lot's préréservation through Koban",
            lots,
            {200: Reply(LotOut, "The lot after the withdrawal.")},
            _merge(
                _WRITE,
                _rules(
                    ErrorCode.LOT_UNKNOWN,
                    ErrorCode.NOT_PRERESERVED,
                    ErrorCode.PRERESERVATION_HOLDER_MISMATCH,
                ),
            ),
            scope=_WRITE_SCOPE,
            body=WithdrawIn,
            idempotent=True,
        ),
    )
    # --- the event stream
    describe(
        "GET",
        EVENTS,
        Operation(
            "A page of the tenant's event stream (CloudEvents 1.0), oldest first",
            events,
            {200: Reply(EventPageOut, "The entries after `after`; `next` continues.")},
            _merge(_AUTH, {410: [EVENTS_EXPIRED]}),
            scope=_READ,
            query=EventsQuery,
        ),
    )
    describe(
        "GET",
        EVENTS + "/stream",
        Operation(
            "The tenant's event stream, live (server-sent events)",
            events,
            {
                200: Reply(
                    None,
                    "`id:` stream entry id, `event:` CloudEvents type, `data:` the CloudEvent "
                    "JSON; a `: ping` comment every 15 s.",
                    "text/event-stream",
                    {"type": "string"},
                )
            },
            _merge(_AUTH, {410: [EVENTS_EXPIRED]}),
            scope=_READ,
            query=StreamQuery,
            description="Resumes after the `Last-Event-ID` header (a reconnecting "
            "EventSource sends it; it wins over `after`), else after `after`, else from now.",
        ),
    )
    # --- event schemas (the same for every tenant: any tenant's read token)
    schema_errors = {k: v for k, v in _AUTH.items() if k not in (404, 503)}
    describe(
        "GET",
        SCHEMAS,
        Operation(
            "The event types and the URI of each one's JSON Schema",
            events,
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
            schema_errors,
            scope=_READ,
            query=NoQuery,
            description="A token of any tenant with the `read` scope reads them.",
        ),
    )
    describe(
        "GET",
        SCHEMA,
        Operation(
            "The JSON Schema (2020-12) of one event type's `data`",
            events,
            {
                200: Reply(
                    None,
                    "The schema; its `$id` is the events' `dataschema`.",
                    JSON,
                    {"type": "object"},
                )
            },
            _merge(schema_errors, {404: ["EVENT_TYPE_UNKNOWN"]}),
            scope=_READ,
            query=NoQuery,
            path_schemas={"type": {"type": "string", "enum": sorted(EVENT_SCHEMAS)}},
            description="A token of any tenant with the `read` scope reads them.",
        ),
    )
    # --- stock sync
    describe(
        "POST",
        SYNC,
        Operation(
            "Start a stock sync from Koban now (in the background)",
            ops,
            {202: Reply(SyncStartedOut, "Started; GET the same path for its outcome.")},
            _merge(
                _AUTH,
                {
                    400: [e.MALFORMED_REQUEST],
                    409: [SYNC_IN_PROGRESS, e.IDEMPOTENCY_IN_PROGRESS],
                    422: [e.IDEMPOTENCY_KEY_REUSED],
                    503: [e.KOBAN_UNAVAILABLE],
                },
            ),
            scope="admin",
            query=NoQuery,
            body=SyncIn,
            idempotent=True,
            description='The body is optional: none, `{}` or `{"full": true}`.',
        ),
    )
    describe(
        "GET",
        SYNC,
        Operation(
            "The latest stock sync run of the tenant",
            ops,
            {200: Reply(SyncStatusOut, "The latest run (state `never` before the first).")},
            _AUTH,
            scope=_READ,
            query=NoQuery,
        ),
    )
    # --- sandbox test clocks
    not_sandbox = {403: [e.CLOCK_NOT_SANDBOX]}
    describe(
        "GET",
        CLOCK,
        Operation(
            "A sandbox tenant's test clock",
            ops,
            {200: Reply(ClockOut, "The test clock: real time plus an offset that only grows.")},
            _merge(_AUTH, not_sandbox),
            scope=_READ,
            query=NoQuery,
        ),
    )
    describe(
        "POST",
        CLOCK,
        Operation(
            "Advance a sandbox tenant's test clock; every tick passed runs before the answer",
            ops,
            {200: Reply(ClockAdvancedOut, "Moved; the ticks processed, in order.")},
            _merge(
                _AUTH,
                not_sandbox,
                {
                    400: [e.MALFORMED_REQUEST],
                    409: [e.IDEMPOTENCY_IN_PROGRESS],
                    422: [e.CLOCK_BACKWARDS, e.IDEMPOTENCY_KEY_REUSED],
                },
            ),
            scope="admin",
            query=NoQuery,
            body=AdvanceClockIn,
            idempotent=True,
            description=(
                "Exactly one of `advanceTo` (an ISO-8601 instant with an offset) and "
                "`advanceBy` (an ISO-8601 duration; calendar parts on the tenant zone's "
                "wall clock), at most 31 days at once. Before the answer, every tick passed "
                "is processed in order through the scheduler's code path; moving backwards "
                "is `422 CLOCK_BACKWARDS`; a tenant without a test clock gets "
                "`403 CLOCK_NOT_SANDBOX`."
            ),
        ),
    )
    # --- operations
    describe(
        "GET",
        "/healthz",
        Operation("Liveness", ops, {200: Reply(HealthOut, "Serving.")}, auth="none"),
    )
    describe(
        "GET",
        "/readyz",
        Operation(
            "Readiness: Redis answers PING; the scheduler's heartbeat age when there is one",
            ops,
            {
                200: Reply(ReadyOut, "Ready."),
                503: Reply(ReadyOut, "Redis does not answer."),
            },
            auth="none",
        ),
    )
    describe(
        "GET",
        "/metrics",
        Operation(
            "Prometheus metrics",
            ops,
            {200: Reply(None, "Prometheus text format 0.0.4.", "text/plain", {"type": "string"})},
            auth="none",
        ),
    )
    describe(
        "GET",
        "/openapi.json",
        Operation(
            "This document",
            ops,
            {200: Reply(None, "OpenAPI 3.1.", JSON, {"type": "object"})},
            auth="none",
        ),
    )
    describe(
        "GET",
        "/docs",
        Operation(
            "A browsable list of the operations",
            ops,
            {200: Reply(None, "HTML.", "text/html", {"type": "string"})},
            auth="none",
        ),
    )
    # --- Koban's webhooks
    prefix = "/koban/{tenant}/"
    describe(
        "GET",
        prefix + "option-check",
        Operation(
            "Koban's pre-check: may an option be placed on the lot now?",
            hooks,
            {200: Reply(OptionCheckOut, "The service's answer.")},
            _WEBHOOK_ERRORS,
            auth="webhook",
            extra_query=[
                {
                    "name": "extcode",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDENTIFIER},
                }
            ],
        ),
    )
    forms: dict[str, type[BaseModel]] = {
        "option-placed": OptionPlacedForm,
        "option-cancelled": OptionCancelledForm,
        "option-prolonged": OptionProlongedForm,
        "option-expired": OptionExpiredForm,
        "reservation-validated": ReservationValidatedForm,
        "reservation-withdrawn": ReservationWithdrawnForm,
    }
    for name, form in forms.items():
        describe(
            "POST",
            prefix + name,
            Operation(
                f"Koban's {name} webhook",
                hooks,
                {200: Reply(WebhookOkOut, "Taken into account (replays and drift included).")},
                _WEBHOOK_ERRORS,
                auth="webhook",
                body=form,
                body_media=FORM,
                description=inspect.getdoc(form),
            ),
        )


_register_builtin()


# --------------------------------------------------------------------------- building


def _strip_null(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A query or form field's schema without its ``null`` branch (no such wire value)."""
    out = dict(schema)
    branches = out.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) != len(branches):
            del out["anyOf"]
            if len(kept) == 1:
                out = {**kept[0], **out}
            else:
                out["anyOf"] = kept
    if out.get("default", 0) is None:
        del out["default"]
    out.pop("title", None)
    return out


# What the webhook forms' validators accept (a form value is a string on the wire; the
# validators run before the field's type, so the models' own schemas say too little).
_FORM_VALUES: dict[Any, dict[str, Any]] = {
    forms._identifier: {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDENTIFIER,
        "pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$",
        "description": "Stripped; blank counts as absent; no control characters.",
    },
    forms._rank: {"type": "integer", "enum": [1, 2], "description": "A hint."},
    forms._instant: {
        "type": "integer",
        "minimum": 1,
        "maximum": forms._MAX_INSTANT * 1000,
        "description": "UNIX time, seconds or (above 10^11) milliseconds.",
    },
}


def _form_schema(model: type[BaseModel], schema: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(schema))
    properties = {k: _strip_null(v) for k, v in out.get("properties", {}).items()}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        for meta in info.metadata:
            known = _FORM_VALUES.get(getattr(meta, "func", None))
            if known is not None and alias in properties:
                properties[alias] = {
                    **known,
                    **{k: v for k, v in properties[alias].items() if k == "default"},
                }
    out["properties"] = properties
    return out


def _path_params(template: str, op: Operation | None) -> list[dict[str, Any]]:
    out = []
    for name in _path_names(template):
        schema: Mapping[str, Any] = {"type": "string", "minLength": 1}
        if name == "tenant":
            schema = {"type": "string", "pattern": TENANT_NAME_PATTERN}
        if op is not None and name in op.path_schemas:
            schema = op.path_schemas[name]
        out.append({"name": name, "in": "path", "required": True, "schema": dict(schema)})
    return out


def _path_names(template: str) -> list[str]:
    names = []
    for part in template.split("{")[1:]:
        names.append(part.split("}", 1)[0].split(":", 1)[0])
    return names


def _query_params(model: type[BaseModel], defs: Mapping[str, Any]) -> list[dict[str, Any]]:
    schema = defs[model.__name__]
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _strip_null(prop)}
        for name, prop in schema.get("properties", {}).items()
    ]


def _error_response(status: int, codes: Sequence[str], model: type[BaseModel]) -> dict[str, Any]:
    listed = ", ".join(f"`{c}`" for c in codes) if codes else "see errorCode"
    out: dict[str, Any] = {
        "description": f"Error envelope: {listed}.",
        "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
        "content": {JSON: {"schema": {"$ref": REF.format(model=model.__name__)}}},
    }
    if status == 503:
        out["headers"]["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return out


def _models(ops: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorOut, "serialization"): None,
        (WebhookErrorOut, "serialization"): None,
    }
    for op in ops:
        for model in (op.query, op.body):
            if model is not None:
                wanted[(model, "validation")] = None
        for reply in op.replies.values():
            if reply.model is not None:
                wanted[(reply.model, "serialization")] = None
    return list(wanted)


def _routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, template, handler) of every documentable route, in registration order."""
    out = []
    seen: set[tuple[str, str]] = set()
    for route in app.router.routes():
        method = route.method.upper()
        resource = route.resource
        if method not in _METHODS or resource is None:
            continue  # HEAD twins of GETs; "*" catch-alls (they only answer errors)
        key = (method, resource.canonical)
        if key not in seen:
            seen.add(key)
            out.append((method, resource.canonical, route.handler))
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("koban-options")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "0.0.0"


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    routes = _routes(app)
    described = [OPERATIONS[(m, p)] for m, p, _ in routes if (m, p) in OPERATIONS]
    _, top = models_json_schema(_models(described), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for method, template, handler in routes:
        op = OPERATIONS.get((method, template))
        paths.setdefault(template, {})[method.lower()] = _operation(
            method, template, handler, op, defs
        )
    schemas = dict(sorted(defs.items()))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "koban-options internal API",
            "version": _version(),
            "description": (
                "Options on Koban lots, kept in step with Koban (SPEC §5). Errors answer "
                "the envelope `ErrorOut`; every answer carries `X-Request-ID`; writes "
                "accept `Idempotency-Key`."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "kobanWebhookHeader": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER},
                "kobanWebhookQuery": {"type": "apiKey", "in": "query", "name": TOKEN_QUERY},
            },
            "headers": {
                "RequestId": {
                    "description": "The request's id (the caller's, when sane, else a new one).",
                    "required": True,
                    "schema": {"type": "string"},
                },
                "RequestIdIfRead": {
                    "description": "The request's id; absent when the HTTP server could not "
                    "read the request.",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string"},
                },
                "IdempotentReplayed": {
                    "description": "`true` when the answer is a stored one replayed.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
    }


def _operation(
    method: str, template: str, handler: Any, op: Operation | None, defs: Mapping[str, Any]
) -> dict[str, Any]:
    if op is None:
        return _undocumented(method, template, handler)
    out: dict[str, Any] = {
        "operationId": _operation_id(method, template),
        "summary": op.summary,
        "tags": [op.tag],
    }
    text = op.description or inspect.getdoc(handler)
    if op.auth == "bearer":
        scope = f"Needs a bearer token with the `{op.scope}` scope." if op.scope else ""
        text = f"{text}\n\n{scope}" if text else scope
    if text:
        out["description"] = text
    params = _path_params(template, op)
    if op.query is not None:
        params += _query_params(op.query, defs)
    params += [dict(p) for p in op.extra_query]
    if op.idempotent:
        params.append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "Makes the write safe to retry (24 h, per token and path).",
                "schema": {"type": "string", "pattern": f"^[ -~]{{1,{MAX_KEY_LENGTH}}}$"},
            }
        )
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema: dict[str, Any] = {"$ref": REF.format(model=op.body.__name__)}
        if op.body_media == FORM:
            schema = _form_schema(op.body, defs[op.body.__name__])
        out["requestBody"] = {"required": True, "content": {op.body_media: {"schema": schema}}}
    responses: dict[str, Any] = {}
    for status, reply in sorted(op.replies.items()):
        headers: dict[str, Any] = {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}}
        if op.idempotent:
            headers[REPLAYED_HEADER] = {"$ref": "#/components/headers/IdempotentReplayed"}
        reply_schema: Mapping[str, Any] = (
            {"$ref": REF.format(model=reply.model.__name__)}
            if reply.model is not None
            else reply.schema or {}
        )
        responses[str(status)] = {
            "description": reply.description,
            "headers": headers,
            "content": {reply.media_type: {"schema": dict(reply_schema)}},
        }
    envelope = WebhookErrorOut if op.auth == "webhook" else ErrorOut
    for status, codes in sorted({400: (), **op.errors}.items()):
        responses.setdefault(str(status), _error_response(status, codes, envelope))
    # aiohttp's HTTP parser answers requests it cannot read (a request line over 8190
    # bytes, oversized headers) itself, in plain text, before any middleware runs.
    bad = responses["400"]
    bad["description"] += " Or plain text from the HTTP server for an unreadable request."
    bad["content"]["text/plain"] = {"schema": {"type": "string"}}
    bad["headers"][REQUEST_ID_HEADER] = {"$ref": "#/components/headers/RequestIdIfRead"}
    out["responses"] = responses
    if op.auth == "bearer":
        out["security"] = [{"bearerAuth": []}]
        if op.scope:
            out["x-scope"] = op.scope
    elif op.auth == "webhook":
        out["security"] = [{"kobanWebhookHeader": []}, {"kobanWebhookQuery": []}]
    else:
        out["security"] = []
    return out


def _undocumented(method: str, template: str, handler: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": _operation_id(method, template),
        "summary": f"{method} {template}",
        "tags": ["undocumented"],
        "x-undocumented": True,
        "responses": {
            "default": {
                "description": "Not described yet (service.entrypoints.api.openapi.describe).",
            }
        },
    }
    text = inspect.getdoc(handler)
    if text:
        out["description"] = text
    params = _path_params(template, None)
    if params:
        out["parameters"] = params
    if template.startswith("/v1/"):
        out["security"] = [{"bearerAuth": []}]
    return out


def _operation_id(method: str, template: str) -> str:
    words = [method.lower()]
    for part in template.strip("/").split("/"):
        if part.startswith("{"):
            part = "by-" + part.strip("{}").split(":", 1)[0]
        words.extend(w for w in part.replace(".", "-").split("-") if w)
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


# --------------------------------------------------------------------------- HTML


def docs_html(spec: Mapping[str, Any]) -> str:
    """A self-contained page listing the operations of `spec` (no scripts, no CDN)."""
    esc = html.escape
    rows = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            security = op.get("security")
            auth = (
                "none"
                if not security
                else "bearer" + (f" ({op['x-scope']})" if op.get("x-scope") else "")
                if "bearerAuth" in security[0]
                else "webhook secret"
            )
            params = ", ".join(
                f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", [])
            )
            body = ""
            if "requestBody" in op:
                media, content = next(iter(op["requestBody"]["content"].items()))
                schema = content["schema"]
                body = f"{_schema_name(schema)} ({media})"
            answers = "<br>".join(
                f"<b>{esc(status)}</b> {esc(_answer(r))}" for status, r in op["responses"].items()
            )
            rows.append(
                "<tr>"
                f"<td><code>{esc(method.upper())}</code></td>"
                f"<td><code>{esc(path)}</code></td>"
                f"<td>{esc(op.get('summary', ''))}</td>"
                f"<td>{esc(auth)}</td>"
                f"<td>{esc(params)}</td>"
                f"<td>{esc(body)}</td>"
                f"<td>{answers}</td>"
                "</tr>"
            )
    schemas = ", ".join(f"<code>{esc(name)}</code>" for name in spec["components"]["schemas"])
    title = esc(f"{spec['info']['title']} {spec['info']['version']}")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{title}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em}"
        "table{border-collapse:collapse;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}"
        "th{background:#eee}code{white-space:nowrap}"
        "</style></head><body>"
        f"<h1>{title}</h1>"
        f'<p>OpenAPI {esc(spec["openapi"])}: <a href="/openapi.json">/openapi.json</a>. '
        f"{esc(spec['info'].get('description', ''))}</p>"
        "<table><thead><tr><th>method</th><th>path</th><th>does</th><th>auth</th>"
        "<th>parameters</th><th>body</th><th>answers</th></tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table><h2>Schemas</h2><p>{schemas}</p></body></html>"
    )


def _schema_name(schema: Mapping[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    return str(schema.get("title") or schema.get("type") or "object")


def _answer(response: Mapping[str, Any]) -> str:
    content = response.get("content")
    if not content:
        return str(response.get("description", ""))
    media, body = next(iter(content.items()))
    name = _schema_name(body.get("schema", {}))
    return f"{name} ({media})" if media != JSON else name


# --------------------------------------------------------------------------- routes


class _Cache:
    def __init__(self) -> None:
        self.spec: dict[str, Any] | None = None
        self.body: bytes | None = None
        self.page: str | None = None


_CACHE_KEY = web.AppKey("api_openapi_cache", _Cache)


def _spec(request: web.Request) -> tuple[dict[str, Any], _Cache]:
    cache = request.app[_CACHE_KEY]
    if cache.spec is None:
        cache.spec = build_openapi(request.app)
    return cache.spec, cache


async def openapi_json(request: web.Request) -> web.Response:
    spec, cache = _spec(request)
    if cache.body is None:
        cache.body = orjson.dumps(spec)
    return web.Response(body=cache.body, content_type=JSON)


async def docs(request: web.Request) -> web.Response:
    spec, cache = _spec(request)
    if cache.page is None:
        cache.page = docs_html(spec)
    return web.Response(text=cache.page, content_type="text/html")


def install_openapi(app: web.Application) -> None:
    """Register ``GET /openapi.json`` and ``GET /docs`` on `app`."""
    app[_CACHE_KEY] = _Cache()
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
