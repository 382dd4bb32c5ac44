"""The one error envelope of the API: ``{"errorCode", "message", "kobanCode", "source",
"requestId", "errors": [{"field", "message"}]}``.

``source`` is ``"koban"`` or ``"local"`` for business refusals (null otherwise);
``kobanCode`` is Koban's code, or the one a local refusal stands for. `error_response`
maps: `RuleViolation` → its status; validation → 422; Koban unreachable → 503, outcome
unknown / unexpected answer → 502; the store unreachable or a lot too contended → 503
``STORE_UNAVAILABLE``; no route 404, wrong method 405, body too large 400; anything else
→ 500 ``INTERNAL_ERROR``, logged with its traceback (never the answer to bad input).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from service.entrypoints.api.logging import request_id_of
from service.koban import KobanError, KobanOutcomeUnknown, KobanUnavailable
from service.storage.errors import (
    StoreClusterError,
    StoreConnectionError,
    StoreSlotNotCovered,
    StoreTimeoutError,
    StoreTryAgain,
)
from service.storage.store import StoreConflict
from statecharts.errors import RuleViolation

__all__ = [
    "ApiError",
    "error_body",
    "error_response",
    "field_errors",
    "json_response",
]

log = structlog.get_logger("service.entrypoints.api")

KOBAN_RETRY_AFTER = "5"


def _koban_retry_after(exc: KobanUnavailable) -> str:
    """Koban's own Retry-After when it gave one (a 429 asking for longer than the client
    waits), else the default."""
    if exc.retry_after is None:
        return KOBAN_RETRY_AFTER
    return str(max(1, math.ceil(exc.retry_after)))


STORE_RETRY_AFTER = "1"

# API-level codes (the business ones are statecharts.errors.ErrorCode values).
MALFORMED_REQUEST = "MALFORMED_REQUEST"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
TENANT_UNKNOWN = "TENANT_UNKNOWN"
NOT_FOUND = "NOT_FOUND"
EVENT_TYPE_UNKNOWN = "EVENT_TYPE_UNKNOWN"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
VALIDATION_FAILED = "VALIDATION_FAILED"
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
IDEMPOTENCY_IN_PROGRESS = "IDEMPOTENCY_IN_PROGRESS"
PLACEMENT_NOT_MADE = "PLACEMENT_NOT_MADE"
KOBAN_UNAVAILABLE = "KOBAN_UNAVAILABLE"
KOBAN_ERROR = "KOBAN_ERROR"
KOBAN_OUTCOME_UNKNOWN = "KOBAN_OUTCOME_UNKNOWN"
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
RATE_LIMITED = "RATE_LIMITED"
INTERNAL_ERROR = "INTERNAL_ERROR"
CLOCK_BACKWARDS = "CLOCK_BACKWARDS"
CLOCK_NOT_SANDBOX = "CLOCK_NOT_SANDBOX"


class ApiError(Exception):
    """A failure answered with the envelope; raise it from handlers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        koban_code: str | None = None,
        source: str | None = None,
        errors: Iterable[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.koban_code = koban_code
        self.source = source
        self.errors = [dict(e) for e in errors]
        self.headers = dict(headers or {})


def malformed(message: str) -> ApiError:
    return ApiError(400, MALFORMED_REQUEST, message)


def validation_failed(errors: Iterable[Mapping[str, str]]) -> ApiError:
    return ApiError(422, VALIDATION_FAILED, "The request has invalid values.", errors=errors)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_body(request: web.Request, exc: ApiError) -> dict[str, Any]:
    return {
        "errorCode": exc.code,
        "message": exc.message,
        "kobanCode": exc.koban_code,
        "source": exc.source,
        "requestId": request_id_of(request),
        "errors": exc.errors,
    }


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic errors as ``[{"field", "message"}]`` (no input values echoed)."""
    out = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"field": field, "message": message})
    return out


# A Redis Cluster answering "not now": down, a slot unserved, or redirections and TRYAGAIN
# (a slot being moved) past redis-py's retries.
_CLUSTER_UNAVAILABLE = StoreClusterError | StoreTryAgain | StoreSlotNotCovered


def as_api_error(exc: BaseException) -> ApiError:
    """The envelope for any exception a handler may raise."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RuleViolation):
        source = "koban" if getattr(exc, "source", None) == "koban" else "local"
        return ApiError(
            exc.http_status, exc.code.value, exc.message, koban_code=exc.koban_code, source=source
        )
    if isinstance(exc, ValidationError):
        return validation_failed(field_errors(exc))
    if isinstance(exc, KobanOutcomeUnknown):
        return ApiError(
            502,
            KOBAN_OUTCOME_UNKNOWN,
            "Koban's answer was lost: the change may or may not have been made in Koban; "
            "the lot is queued for reconciliation.",
        )
    if isinstance(exc, KobanUnavailable):
        return ApiError(
            503,
            KOBAN_UNAVAILABLE,
            "Koban cannot be reached right now; nothing was changed. Retry later.",
            headers={"Retry-After": _koban_retry_after(exc)},
        )
    if isinstance(exc, KobanError):
        return ApiError(502, KOBAN_ERROR, "Koban answered unexpectedly; nothing was changed.")
    if isinstance(exc, StoreConnectionError | StoreTimeoutError | _CLUSTER_UNAVAILABLE):
        return ApiError(
            503,
            STORE_UNAVAILABLE,
            "The store cannot be reached right now. Retry later.",
            headers={"Retry-After": STORE_RETRY_AFTER},
        )
    if isinstance(exc, StoreConflict):
        return ApiError(
            503,
            STORE_UNAVAILABLE,
            "The lot is changing too fast to be written now. Retry later.",
            headers={"Retry-After": STORE_RETRY_AFTER},
        )
    if isinstance(exc, web.HTTPException):
        return _http_exception(exc)
    return ApiError(500, INTERNAL_ERROR, "Internal error; the request id names it in the logs.")


def _http_exception(exc: web.HTTPException) -> ApiError:
    status = exc.status
    if status == 404:
        return ApiError(404, NOT_FOUND, "No such route.")
    if status == 405:
        allow = exc.headers.get("Allow")
        return ApiError(
            405,
            METHOD_NOT_ALLOWED,
            "Method not allowed on this route.",
            headers={"Allow": allow} if allow else None,
        )
    if status == 413 or 400 <= status < 500:
        return malformed(exc.text or "Malformed request.")
    return ApiError(status, INTERNAL_ERROR if status >= 500 else f"HTTP_{status}", exc.reason)


def error_response(request: web.Request, exc: BaseException) -> web.Response:
    error = as_api_error(exc)
    if error.status >= 500 and error.code == INTERNAL_ERROR:
        log.error("unhandled_error", exc_info=exc)
    elif error.status >= 500:
        log.warning("upstream_failure", error_code=error.code, detail=str(exc))
    return json_response(error_body(request, error), error.status, error.headers)
