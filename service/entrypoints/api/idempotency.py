"""``Idempotency-Key`` on writes (SPEC §5).

Scope: (tenant, token, method, path) — the Redis key is
``kol:{t}:idem:<sha256(token id, method, path, key)>``, in the tenant's hash slot. The
request's fingerprint is the SHA-256 of its canonical JSON body (keys sorted) and query.

* First request: an in-flight marker is set (``SET NX``, 60 s, so a crash releases it),
  the write runs, and its answer is stored for 24 h when it is 2xx or 4xx; after a 5xx the
  marker is removed (if still ours), so the client may simply retry.
* Same key, same fingerprint, answer stored → that answer again, with
  ``Idempotent-Replayed: true``. A stored ``202 pending`` is not replayed as such: the
  route's ``refresh`` turns it into the intent's current state (still 202 while pending,
  the final answer once resolved — then stored in its place).
* Same key, other fingerprint → 422 ``IDEMPOTENCY_KEY_REUSED``.
* Same key while the first request runs → 409 ``IDEMPOTENCY_IN_PROGRESS``.

Requests refused before the write starts (authentication, malformed or invalid bodies) are
not recorded: they changed nothing and answer the same way again. A replayed body is the
stored one (its ``requestId`` names the request that did the work); the response's
``X-Request-ID`` header is the replay's own.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.errors import (
    IDEMPOTENCY_IN_PROGRESS,
    IDEMPOTENCY_KEY_REUSED,
    ApiError,
    error_response,
    validation_failed,
)
from service.storage.redis_client import RedisClient

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

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)


def redis_key(caller: Caller, request: web.Request, key: str) -> str:
    scope = "\n".join((caller.token_id, request.method, request.path, key))
    digest = hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{caller.tenant.store.keys.prefix}idem:{digest}"


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
    redis = caller.tenant.store.redis
    rkey = redis_key(caller, request, key)
    fingerprint = hashlib.sha256(canonical).hexdigest()
    marker = uuid.uuid4().hex
    in_flight = orjson.dumps({"state": "in_flight", "hash": fingerprint, "marker": marker})
    for _ in range(3):
        if await redis.set(rkey, in_flight, nx=True, ex=IN_FLIGHT_TTL_S):
            return await _first(request, redis, rkey, in_flight, fingerprint, action)
        raw = cast(bytes | None, await redis.get(rkey))
        if raw is not None:
            return await _again(request, caller, rkey, orjson.loads(raw), fingerprint, refresh)
    raise ApiError(409, IDEMPOTENCY_IN_PROGRESS, "The request with this key is still running.")


async def _first(
    request: web.Request,
    redis: RedisClient,
    rkey: str,
    in_flight: bytes,
    fingerprint: str,
    action: Callable[[], Awaitable[web.Response]],
) -> web.Response:
    try:
        response = await action()
    except Exception as exc:
        response = error_response(request, exc)
    except BaseException:
        await _release(redis, rkey, in_flight)
        raise
    if response.status >= 500:
        await _release(redis, rkey, in_flight)
        return response
    try:
        await redis.set(rkey, _record(response, fingerprint), ex=STORED_TTL_S)
    except RedisError as exc:  # the write happened; only its replay is lost
        log.warning("idempotency_store_failed", error=repr(exc))
    return response


async def _release(redis: RedisClient, rkey: str, in_flight: bytes) -> None:
    """Drop the in-flight marker if it is still ours (a 5xx is not remembered)."""
    try:
        await redis.eval(_RELEASE, 1, rkey, in_flight)
    except RedisError as exc:  # the marker expires by itself
        log.warning("idempotency_release_failed", error=repr(exc))


async def _again(
    request: web.Request,
    caller: Caller,
    rkey: str,
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
                await caller.tenant.store.redis.set(
                    rkey, _record(response, fingerprint), keepttl=True, xx=True
                )
            except RedisError as exc:
                log.warning("idempotency_store_failed", error=repr(exc))
    else:
        response = stored_response(record)
    response.headers[REPLAYED_HEADER] = "true"
    return response
