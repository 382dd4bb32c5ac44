"""Builds the OpenAPI 3.1 document of an app from its router and the routes' `Operation`s.

Every route of the app is a path (``HEAD`` twins and ``*`` catch-alls aside); schemas come
from the pydantic models that validate the requests and shape the answers
(``models_json_schema``), so the document cannot drift from the code. Query models become
one parameter per field, webhook forms ``application/x-www-form-urlencoded`` schemas; every
error status answers the error envelope. The rules are in docs/api.md.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import AliasGenerator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service.config import TENANT_NAME_PATTERN
from service.entrypoints.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from service.entrypoints.api.idempotency import MAX_KEY_LENGTH, REPLAYED_HEADER
from service.entrypoints.api.logging import REQUEST_ID_HEADER
from service.entrypoints.api.openapi import FORM, JSON, Operation, operation_of
from service.entrypoints.koban_webhooks import TOKEN_HEADER, TOKEN_QUERY
from service.koban import webhook_forms as forms
from service.koban.webhook_forms import MAX_IDENTIFIER

__all__ = ["ErrorOut", "WebhookErrorOut", "build_openapi"]

OPENAPI_VERSION = "3.1.0"
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
    routes = [(m, p, h, operation_of(m, p, h)) for m, p, h in _routes(app)]
    described = [op for _, _, _, op in routes if op is not None]
    _, top = models_json_schema(_models(described), ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for method, template, handler, op in routes:
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
                "Options on Koban lots, kept in step with Koban. Errors answer "
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
