"""Webhook subscriptions over HTTP (admin scope): ``/v1/tenants/{t}/subscriptions…``.

Create, list, read, change (``url`` passes the target checks again; ``status: active``
resumes delivery where it stopped), delete, the delivery log (newest first, paged by
``cursor``), replay (the same event ids again), secret rotation and ping. The secret is in
the answer to create and rotate only; an ``Idempotency-Key`` replay of those answers
carries ``"secret": null`` (the stored answer never holds it). Bad input answers the
error envelope: 422 for a bad URL, an unknown type pattern or a refused target.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import aiohttp
import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, field_validator

from service.entrypoints.api import errors as e
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import ApiError, json_response, validation_failed
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import (
    Instant,
    InstantIn,
    Limit,
    NoQuery,
    Text,
    _In,
    _Out,
    canonical_body,
    dump,
    parse_body,
    parse_query,
)
from service.entrypoints.api.openapi import Operation, Reply, describe
from service.entrypoints.api.routes_events import StreamId
from service.entrypoints.api.routes_lots import BASE
from service.outbound.targets import TargetPolicy, guarded_session
from service.storage.subscriptions import DeliveryRecord, Subscription, SubscriptionStore
from service.tenancy import Tenant
from service.usecases import subscriptions as uc
from service.usecases.delivery import policy_of

__all__ = ["SUBSCRIPTIONS", "install_subscriptions"]

log = structlog.get_logger("service.entrypoints.api.subscriptions")

SUBSCRIPTIONS = BASE + "/subscriptions"
ONE = SUBSCRIPTIONS + "/{subscription}"
SUBSCRIPTION_NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
SUBSCRIPTIONS_UNAVAILABLE = "SUBSCRIPTIONS_UNAVAILABLE"

routes = web.RouteTableDef()

Url = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
TypePattern = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def _check_types(types: list[str]) -> list[str]:
    for pattern in types:
        reason = uc.type_error(pattern)
        if reason is not None:
            raise ValueError(f"{pattern!r}: {reason}")
    return types


class SubscriptionIn(_In):
    url: Url
    name: Text
    types: list[TypePattern] = Field(min_length=1, max_length=64)

    _types = field_validator("types")(_check_types)


class SubscriptionPatch(_In):
    url: Url | None = None
    name: Text | None = None
    types: list[TypePattern] | None = Field(default=None, min_length=1, max_length=64)
    status: Literal["active", "inactive"] | None = None

    @field_validator("types")
    @classmethod
    def _types(cls, types: list[str] | None) -> list[str] | None:
        return _check_types(types) if types is not None else None


class ReplayIn(_In):
    after: StreamId | None = None
    from_: InstantIn | None = Field(default=None, alias="from")
    to: InstantIn | None = None


class DeliveriesQuery(_In):
    limit: Limit = 100
    cursor: StreamId | None = None


class SubscriptionOut(_Out):
    id: str
    name: str
    url: str
    types: list[str]
    status: Literal["active", "inactive"]
    failure_count: int
    last_success_at: Instant | None
    created_at: Instant
    disabled_reason: str | None


class SubscriptionCreatedOut(SubscriptionOut):
    secret: str | None = Field(
        default=None, description="shown once; null in an Idempotency-Key replay"
    )


class SubscriptionListOut(_Out):
    items: list[SubscriptionOut]


class DeliveryOut(_Out):
    event_id: str
    type: str
    attempt: int
    at: Instant
    status: int | None = Field(description="the receiver's HTTP status; null: no answer")
    error: str | None
    duration_ms: int
    next_attempt_at: Instant | None


class DeliveryPageOut(_Out):
    items: list[DeliveryOut]
    next_cursor: str | None


class ReplayOut(_Out):
    queued: int


class SecretOut(_Out):
    secret: str | None


class PingOut(_Out):
    status: Literal["queued"]
    subscription_id: str


# --------------------------------------------------------------------------- helpers


def _out(sub: Subscription, model: type[SubscriptionOut] = SubscriptionOut) -> SubscriptionOut:
    return model(
        id=sub.id,
        name=sub.name,
        url=sub.url,
        types=sub.types,
        status="inactive" if sub.status == "inactive" else "active",
        failure_count=sub.failure_count,
        last_success_at=sub.last_success_at,
        created_at=sub.created_at,
        disabled_reason=sub.disabled_reason,
    )


def _delivery(record: DeliveryRecord) -> DeliveryOut:
    return DeliveryOut(
        event_id=record.event_id,
        type=record.type,
        attempt=record.attempt,
        at=record.at,
        status=record.status,
        error=record.error,
        duration_ms=record.duration_ms,
        next_attempt_at=record.next_attempt_at,
    )


def _store(caller: Caller) -> SubscriptionStore:
    store = caller.tenant.subscriptions
    if store is None:
        raise ApiError(503, SUBSCRIPTIONS_UNAVAILABLE, "Subscriptions are not set up here.")
    return store


def _need_key(tenant: Tenant) -> None:
    if tenant.secret_box is None:
        raise ApiError(
            503,
            SUBSCRIPTIONS_UNAVAILABLE,
            "No subscription key is configured (KOBAN_OPTIONS_SUBSCRIPTION_KEY).",
        )


async def _one(request: web.Request, caller: Caller) -> Subscription:
    sub_id = request.match_info["subscription"]
    sub = await _store(caller).get(sub_id) if len(sub_id) <= 64 else None
    if sub is None:
        raise ApiError(404, SUBSCRIPTION_NOT_FOUND, "No such subscription.")
    return sub


async def _check_target(tenant: Tenant, url: str) -> None:
    reason = await uc.target_refusal(tenant, url)
    if reason is not None:
        raise validation_failed([{"field": "url", "message": f"target refused: {reason}"}])


def _with_secret(response: web.Response, secret: str | None) -> web.Response:
    """The answer just made, with the secret put back in (the stored one has null)."""
    if secret is None or response.status >= 300 or response.headers.get("Idempotent-Replayed"):
        return response
    body = response.body
    assert isinstance(body, bytes)
    data = orjson.loads(body)
    data["secret"] = secret
    fresh = json_response(data, response.status)
    for name in ("Location",):
        if name in response.headers:
            fresh.headers[name] = response.headers[name]
    return fresh


# --------------------------------------------------------------------------- routes


@routes.post(SUBSCRIPTIONS)
async def create(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    body, raw = await parse_body(request, SubscriptionIn)
    tenant = caller.tenant
    _store(caller)
    _need_key(tenant)
    made: list[str] = []

    async def action() -> web.Response:
        await _check_target(tenant, body.url)
        sub, secret = await uc.create_subscription(tenant, body.name, body.url, body.types)
        made.append(secret)
        out = _out(sub, SubscriptionCreatedOut)  # the stored answer: secret null
        log.info("subscription_created", subscription=sub.id)
        return json_response(dump(out), 201, headers={"Location": f"{request.path}/{sub.id}"})

    response = await idempotent(request, caller, canonical_body(raw), action)
    return _with_secret(response, made[0] if made else None)


@routes.get(SUBSCRIPTIONS)
async def list_all(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    subs = await _store(caller).all()
    return json_response(dump(SubscriptionListOut(items=[_out(s) for s in subs])))


@routes.get(ONE)
async def read_one(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    return json_response(dump(_out(await _one(request, caller))))


@routes.patch(ONE)
async def change(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    body, raw = await parse_body(request, SubscriptionPatch)
    tenant = caller.tenant

    async def action() -> web.Response:
        sub = await _one(request, caller)
        store = _store(caller)
        if body.url is not None and body.url != sub.url:
            await _check_target(tenant, body.url)
        if body.url is not None or body.name is not None or body.types is not None:
            sub.url = body.url if body.url is not None else sub.url
            sub.name = body.name if body.name is not None else sub.name
            sub.types = list(dict.fromkeys(body.types)) if body.types is not None else sub.types
            if not await store.save_config(sub):
                raise ApiError(404, SUBSCRIPTION_NOT_FOUND, "No such subscription.")
        if body.status is not None:
            await store.set_status(sub.id, body.status, tenant.clock.now())
            log.info("subscription_status", subscription=sub.id, status=body.status)
        fresh = await _one(request, caller)
        return json_response(dump(_out(fresh)))

    return await idempotent(request, caller, canonical_body(raw), action)


@routes.delete(ONE)
async def remove(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    sub = await _one(request, caller)
    await _store(caller).delete(sub.id)
    log.info("subscription_deleted", subscription=sub.id)
    return web.Response(status=204)


@routes.get(ONE + "/deliveries")
async def deliveries(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    query = parse_query(request, DeliveriesQuery)
    sub = await _one(request, caller)
    records, more = await _store(caller).deliveries(sub.id, query.limit, query.cursor)
    page = DeliveryPageOut(items=[_delivery(r) for r in records], next_cursor=more)
    return json_response(dump(page))


@routes.post(ONE + "/replay")
async def replay(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    body, raw = await parse_body(request, ReplayIn)
    if body.from_ is not None and body.to is not None and body.to < body.from_:
        raise validation_failed([{"field": "to", "message": "must not be before 'from'"}])

    async def action() -> web.Response:
        sub = await _one(request, caller)
        queued = await _store(caller).replay(
            sub, caller.tenant.clock.now(), after=body.after, start=body.from_, end=body.to
        )
        log.info("subscription_replay", subscription=sub.id, queued=queued)
        return json_response(dump(ReplayOut(queued=queued)), 202)

    return await idempotent(request, caller, canonical_body(raw), action)


@routes.post(ONE + "/rotate-secret")
async def rotate(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    raw = await _optional_json(request)
    tenant = caller.tenant
    _need_key(tenant)
    made: list[str] = []

    async def action() -> web.Response:
        sub = await _one(request, caller)
        secret = await uc.rotate_secret(tenant, sub)
        if secret is None:
            raise ApiError(404, SUBSCRIPTION_NOT_FOUND, "No such subscription.")
        made.append(secret)
        log.info("subscription_secret_rotated", subscription=sub.id)
        return json_response(dump(SecretOut(secret=None)))

    response = await idempotent(request, caller, canonical_body(raw), action)
    return _with_secret(response, made[0] if made else None)


@routes.post(ONE + "/ping")
async def send_ping(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    await _optional_json(request)
    tenant = caller.tenant
    _need_key(tenant)
    sub = await _one(request, caller)
    pings = request.app[_PINGS]
    session = pings.session(policy_of(tenant.settings))

    async def background() -> None:
        try:
            await uc.ping(tenant, sub, session)
        except Exception as exc:  # logged by id: the URL may hold credentials
            log.warning("subscription_ping_failed", subscription=sub.id, error=type(exc).__name__)

    task = asyncio.create_task(background())
    pings.tasks.add(task)
    task.add_done_callback(pings.tasks.discard)
    return json_response(dump(PingOut(status="queued", subscription_id=sub.id)), 202)


async def _optional_json(request: web.Request) -> object:
    from service.entrypoints.api.models import read_json

    if request.content_length in (None, 0) and not request.body_exists:
        return {}
    data = await read_json(request)
    if data != {}:
        raise validation_failed([{"field": "body", "message": "no body (or {}) expected"}])
    return data


# --------------------------------------------------------------------------- wiring


class _Pings:
    """The API's sessions for pings (one per target policy) and the pings in flight."""

    def __init__(self) -> None:
        self.sessions: dict[TargetPolicy, aiohttp.ClientSession] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def session(self, policy: TargetPolicy) -> aiohttp.ClientSession:
        found = self.sessions.get(policy)
        if found is None:
            found = self.sessions[policy] = guarded_session(policy, limit=10)
        return found


_PINGS = web.AppKey("api_subscription_pings", _Pings)


def install_subscriptions(app: web.Application) -> None:
    """The routes, their OpenAPI description, and the pings' sessions (closed with the app)."""
    app[_PINGS] = _Pings()

    async def close(app: web.Application) -> AsyncIterator[None]:
        yield
        pings = app[_PINGS]
        for task in list(pings.tasks):
            task.cancel()
        for task in list(pings.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in pings.sessions.values():
            await session.close()

    app.cleanup_ctx.append(close)
    app.add_routes(routes)
    _describe()


# --------------------------------------------------------------------------- OpenAPI

_TAG = "subscriptions"
_BASE_ERRORS: dict[int, list[str]] = {
    401: [e.UNAUTHENTICATED],
    403: [e.FORBIDDEN],
    404: [e.TENANT_UNKNOWN],
    422: [e.VALIDATION_FAILED],
    503: [e.STORE_UNAVAILABLE, SUBSCRIPTIONS_UNAVAILABLE],
}


def _errors(*, one: bool = False, write: bool = False) -> dict[int, list[str]]:
    out = {status: list(codes) for status, codes in _BASE_ERRORS.items()}
    if one:
        out[404].append(SUBSCRIPTION_NOT_FOUND)
    if write:
        out[400] = [e.MALFORMED_REQUEST]
        out[409] = [e.IDEMPOTENCY_IN_PROGRESS]
        out[422].append(e.IDEMPOTENCY_KEY_REUSED)
    return dict(sorted(out.items()))


def _describe() -> None:
    def op(
        summary: str,
        replies: dict[int, Reply],
        *,
        errors: dict[int, list[str]],
        query: type[BaseModel],
        body: type[BaseModel] | None = None,
        idempotent: bool = False,
        description: str | None = None,
    ) -> Operation:
        return Operation(
            summary,
            _TAG,
            replies,
            errors,
            scope="admin",
            query=query,
            body=body,
            idempotent=idempotent,
            description=description,
        )

    describe(
        "POST",
        SUBSCRIPTIONS,
        op(
            "Subscribe a URL to the tenant's events (signed per Standard Webhooks)",
            {201: Reply(SubscriptionCreatedOut, "Created; `secret` is shown this once.")},
            errors=_errors(write=True),
            query=NoQuery,
            body=SubscriptionIn,
            idempotent=True,
            description="`types`: exact event types, `prefix.*` or `*`. The URL must be "
            "https:// (http:// where the tenant allows it) and pass the target checks.",
        ),
    )
    describe(
        "GET",
        SUBSCRIPTIONS,
        op(
            "The tenant's subscriptions (never their secrets)",
            {200: Reply(SubscriptionListOut, "Every subscription.")},
            errors=_errors(),
            query=NoQuery,
        ),
    )
    describe(
        "GET",
        ONE,
        op(
            "One subscription (never its secret)",
            {200: Reply(SubscriptionOut, "The subscription.")},
            errors=_errors(one=True),
            query=NoQuery,
        ),
    )
    describe(
        "PATCH",
        ONE,
        op(
            "Change a subscription's url, name, types or status",
            {200: Reply(SubscriptionOut, "The subscription as it is now.")},
            errors=_errors(one=True, write=True),
            query=NoQuery,
            body=SubscriptionPatch,
            idempotent=True,
            description="A new `url` passes the target checks again; `status: active` "
            "resumes delivery where it stopped.",
        ),
    )
    describe(
        "DELETE",
        ONE,
        op(
            "Delete a subscription, its queues and its delivery log",
            {204: Reply(None, "Deleted.", schema={})},
            errors=_errors(one=True),
            query=NoQuery,
        ),
    )
    describe(
        "GET",
        ONE + "/deliveries",
        op(
            "The delivery log, newest first",
            {200: Reply(DeliveryPageOut, "A page; pass `nextCursor` as `cursor` for older.")},
            errors=_errors(one=True),
            query=DeliveriesQuery,
        ),
    )
    describe(
        "POST",
        ONE + "/replay",
        op(
            "Deliver retained events again (same event ids)",
            {202: Reply(ReplayOut, "Queued behind what each entity has pending.")},
            errors=_errors(one=True, write=True),
            query=NoQuery,
            body=ReplayIn,
            idempotent=True,
            description="`after`: a stream entry id (exclusive); `from`/`to`: the "
            "CloudEvent `time`, inclusive. Only events of the subscription's types.",
        ),
    )
    describe(
        "POST",
        ONE + "/rotate-secret",
        op(
            "A new secret; the old one also signs for 24 h",
            {200: Reply(SecretOut, "The new secret (null in an Idempotency-Key replay).")},
            errors=_errors(one=True, write=True),
            query=NoQuery,
            idempotent=True,
        ),
    )
    describe(
        "POST",
        ONE + "/ping",
        op(
            "Send one koban.subscription.ping now (not through the stream)",
            {202: Reply(PingOut, "Sent in the background; its outcome is in the log.")},
            errors=_errors(one=True, write=True),
            query=NoQuery,
        ),
    )
