"""What each route tells ``/openapi.json`` beyond what the router knows: its `Operation`.

Two ways to describe a route, both read by `service.entrypoints.api.openapi_builder`:

* next to the handler: ``@documented(OP)`` under the route decorator attaches `OP` to the
  handler, and the handler reads its query and body through it (``OP.parse_query(request)``,
  ``await OP.parse_body(request)``), so each model is named once;
* from elsewhere (a closure handler, a module you do not own):
  ``describe(method, template, OP)``, keyed by the aiohttp route template.

A route with neither is still listed, marked ``x-undocumented``. See docs/api.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel
from typing_extensions import TypeVar as DefaultTypeVar

from service.entrypoints.api import errors as e
from service.entrypoints.api.models import parse_body, parse_query, validate
from statecharts.errors import HTTP_STATUS, ErrorCode

__all__ = [
    "AUTH_ERRORS",
    "FORM",
    "JSON",
    "KOBAN_ERRORS",
    "OPERATIONS",
    "READ",
    "WRITE",
    "WRITE_ERRORS",
    "Operation",
    "Reply",
    "describe",
    "documented",
    "merge",
    "operation_of",
    "operations",
    "rules",
]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
READ, WRITE = "read", "write"

Auth = Literal["bearer", "webhook", "none"]
# The query and body models an operation validates (BaseModel when it has none).
Q = DefaultTypeVar("Q", bound=BaseModel, default=BaseModel)
B = DefaultTypeVar("B", bound=BaseModel, default=BaseModel)
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


@dataclass(frozen=True)
class Reply:
    """A success answer: its model (None: no JSON schema), description and media type."""

    model: type[BaseModel] | None
    description: str
    media_type: str = JSON
    schema: Mapping[str, Any] | None = None  # when there is no model


@dataclass(frozen=True)
class Operation(Generic[Q, B]):
    """One route's description; its `query` and `body` models also validate the request."""

    summary: str
    tag: str
    replies: Mapping[int, Reply]
    errors: Mapping[int, Sequence[str]] = field(default_factory=dict)
    auth: Auth = "bearer"
    scope: str | None = None
    query: type[Q] | None = None
    body: type[B] | None = None
    body_media: str = JSON
    idempotent: bool = False
    path_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    extra_query: Sequence[Mapping[str, Any]] = ()
    description: str | None = None

    def parse_query(self, request: web.Request) -> Q:
        """The request's query validated by `query` (unknown parameters refused)."""
        if self.query is None:
            raise TypeError(f"{self.summary!r} describes no query model")
        return parse_query(request, self.query)

    async def parse_body(self, request: web.Request) -> tuple[B, Any]:
        """(the body validated by `body`, the parsed JSON as sent)."""
        return await parse_body(request, self._body())

    def validate_body(self, data: Any) -> B:
        return validate(self._body(), data)

    def _body(self) -> type[B]:
        if self.body is None:
            raise TypeError(f"{self.summary!r} describes no body model")
        return self.body


# Handlers carry their operation under this attribute (functools.wraps copies it along).
_ATTRIBUTE = "__openapi_operation__"
# Routes described from outside their module, keyed by (METHOD, aiohttp template).
OPERATIONS: dict[tuple[str, str], Operation] = {}


def documented(operation: Operation[Any, Any]) -> Callable[[H], H]:
    """Attach `operation` to the handler it decorates (the handler itself is unchanged)."""

    def attach(handler: H) -> H:
        setattr(handler, _ATTRIBUTE, operation)
        return handler

    return attach


def describe(method: str, path: str, operation: Operation[Any, Any]) -> None:
    """Document the route (`method`, aiohttp template `path`) in /openapi.json."""
    OPERATIONS[(method.upper(), path)] = operation


def operation_of(method: str, template: str, handler: object) -> Operation | None:
    """The route's operation: its handler's own, else the one `describe` registered."""
    own = getattr(handler, _ATTRIBUTE, None)
    if isinstance(own, Operation):
        return own
    return OPERATIONS.get((method.upper(), template))


def operations(app: web.Application) -> dict[tuple[str, str], Operation]:
    """Every described route of `app`, keyed by (METHOD, template)."""
    out: dict[tuple[str, str], Operation] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        key = (route.method.upper(), resource.canonical)
        op = operation_of(*key, route.handler)
        if op is not None:
            out.setdefault(key, op)
    return out


# --------------------------------------------------------------------------- error catalogue


def rules(*codes: ErrorCode) -> dict[int, list[str]]:
    """The chart's refusals `codes`, grouped by the HTTP status each answers."""
    out: dict[int, list[str]] = {}
    for code in codes:
        out.setdefault(HTTP_STATUS[code], []).append(code.value)
    return out


def merge(*parts: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    """Error catalogues joined per status, each code once, statuses in order."""
    out: dict[int, list[str]] = {}
    for part in parts:
        for status, codes in part.items():
            bucket = out.setdefault(status, [])
            bucket.extend(c for c in codes if c not in bucket)
    return dict(sorted(out.items()))


AUTH_ERRORS = {
    401: [e.UNAUTHENTICATED],
    403: [e.FORBIDDEN],
    404: [e.TENANT_UNKNOWN],
    422: [e.VALIDATION_FAILED],
    503: [e.STORE_UNAVAILABLE],
}
KOBAN_ERRORS = {502: [e.KOBAN_ERROR], 503: [e.KOBAN_UNAVAILABLE]}
WRITE_ERRORS = merge(
    AUTH_ERRORS,
    KOBAN_ERRORS,
    {
        400: [e.MALFORMED_REQUEST],
        409: [e.IDEMPOTENCY_IN_PROGRESS],
        422: [e.IDEMPOTENCY_KEY_REUSED],
        502: [e.KOBAN_OUTCOME_UNKNOWN],
    },
)
