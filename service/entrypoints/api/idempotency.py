"""``Idempotency-Key`` on writes, scoped to (tenant, token, method, path, key).

First request: an in-flight marker (60 s) while the write runs, then its 2xx/4xx answer
kept 24 h (a 5xx drops the marker: retry). Same key and body (SHA-256 of the canonical
JSON body and query) → that answer again with ``Idempotent-Replayed: true`` (a kept 202 is
refreshed into the intent's current state); another body → 422
``IDEMPOTENCY_KEY_REUSED``; while the first runs → 409 ``IDEMPOTENCY_IN_PROGRESS``.
Requests refused before the write starts are not remembered. Storage:
`service.storage.idempotency`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import structlog
from aiohttp import web

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.errors import (
    IDEMPOTENCY_IN_PROGRESS,
    IDEMPOTENCY_KEY_REUSED,
    ApiError,
    error_response,
    validation_failed,
)
from service.storage.errors import StoreError
from service.storage.idempotency import IdempotencyRecords

__all__ = ["HEADER", "REPLAYED_HEADER", "Refresh", "idempotent"]

log = structlog.get_logger("service.entrypoints.api")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
STORED_TTL_S = 24 * 3600
IN_FLIGHT_TTL_S = 60
MAX_KEY_LENGTH = 255
_KEPT_HEADERS = ("Location", "Retry-After")

# (request, caller, the stored record) → the answer to give now.
Refresh = Callable[[web.Request, Caller, dict[str, Any]], Awaitable[web.Response]]


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)


def scope_digest(caller: Caller, request: web.Request, key: str) -> str:
    """What an Idempotency-Key is remembered under: its token, method, path and value."""
    scope = "\n".join((caller.token_id, request.method, request.path, key))
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()


def _record(response: web.Response, fingerprint: str) -> bytes:
    body = response.body
    assert isinstance(body, bytes)
    return orjson.dumps(
        {
            "state": "done",
            "hash": fingerprint,
            "status": response.status,
            "body": body.decode(),
            "headers": {h: response.headers[h] for h in _KEPT_HEADERS if h in response.headers},
        }
    )


def stored_response(record: dict[str, Any]) -> web.Response:
    return web.Response(
        body=cast(str, record["body"]).encode(),
        status=int(record["status"]),
        content_type="application/json",
        headers=cast(dict[str, str], record.get("headers") or {}),
    )


async def idempotent(
    request: web.Request,
    caller: Caller,
    canonical: bytes,
    action: Callable[[], Awaitable[web.Response]],
    refresh: Refresh | None = None,
) -> web.Response:
    """Run `action` once per Idempotency-Key (or plainly when there is none)."""
    key = request.headers.get(HEADER)
    if key is None:
        return await action()
    if not _valid_key(key):
        raise validation_failed(
            [{"field": HEADER, "message": f"1 to {MAX_KEY_LENGTH} printable ASCII characters"}]
        )
    records = IdempotencyRecords(caller.tenant.store)
    scope = scope_digest(caller, request, key)
    fingerprint = hashlib.sha256(canonical).hexdigest()
    marker = uuid.uuid4().hex
    in_flight = orjson.dumps({"state": "in_flight", "hash": fingerprint, "marker": marker})
    for _ in range(3):
        if await records.claim(scope, in_flight, IN_FLIGHT_TTL_S):
            return await _first(request, records, scope, in_flight, fingerprint, action)
        record = await records.get(scope)
        if record is not None:
            return await _again(request, caller, records, scope, record, fingerprint, refresh)
    raise ApiError(409, IDEMPOTENCY_IN_PROGRESS, "The request with this key is still running.")


async def _first(
    request: web.Request,
    records: IdempotencyRecords,
    scope: str,
    in_flight: bytes,
    fingerprint: str,
    action: Callable[[], Awaitable[web.Response]],
) -> web.Response:
    try:
        response = await action()
    except Exception as exc:
        response = error_response(request, exc)
    except BaseException:
        await _release(records, scope, in_flight)
        raise
    if response.status >= 500:
        await _release(records, scope, in_flight)
        return response
    try:
        await records.keep(scope, _record(response, fingerprint), STORED_TTL_S)
    except StoreError as exc:  # the write happened; only its replay is lost
        log.warning("idempotency_store_failed", error=repr(exc))
    return response


async def _release(records: IdempotencyRecords, scope: str, in_flight: bytes) -> None:
    """Drop the in-flight marker if it is still ours (a 5xx is not remembered)."""
    try:
        await records.release(scope, in_flight)
    except StoreError as exc:  # the marker expires by itself
        log.warning("idempotency_release_failed", error=repr(exc))


async def _again(
    request: web.Request,
    caller: Caller,
    records: IdempotencyRecords,
    scope: str,
    record: dict[str, Any],
    fingerprint: str,
    refresh: Refresh | None,
) -> web.Response:
    if record.get("hash") != fingerprint:
        raise ApiError(
            422,
            IDEMPOTENCY_KEY_REUSED,
            "This Idempotency-Key was used with another request body.",
        )
    if record.get("state") != "done":
        raise ApiError(
            409,
            IDEMPOTENCY_IN_PROGRESS,
            "The request with this key is still running.",
            headers={"Retry-After": "1"},
        )
    if record.get("status") == 202 and refresh is not None:
        try:
            response = await refresh(request, caller, record)
        except Exception as exc:
            response = error_response(request, exc)
        if response.status != 202 and response.status < 500:
            try:
                await records.replace(scope, _record(response, fingerprint))
            except StoreError as exc:
                log.warning("idempotency_store_failed", error=repr(exc))
    else:
        response = stored_response(record)
    response.headers[REPLAYED_HEADER] = "true"
    return response
