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

import aiohttp
import orjson
import structlog
from aiohttp import web

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import ApiError, json_response, validation_failed
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import NoQuery, canonical_body, dump, parse_body, parse_query
from service.entrypoints.api.openapi_subscriptions import describe_subscriptions
from service.entrypoints.api.subscription_models import (
    ONE,
    SUBSCRIPTION_NOT_FOUND,
    SUBSCRIPTIONS,
    SUBSCRIPTIONS_UNAVAILABLE,
    DeliveriesQuery,
    DeliveryPageOut,
    PingOut,
    ReplayIn,
    ReplayOut,
    SecretOut,
    SubscriptionCreatedOut,
    SubscriptionIn,
    SubscriptionListOut,
    SubscriptionPatch,
    delivery_out,
    subscription_out,
)
from service.outbound.targets import TargetPolicy, guarded_session
from service.storage.subscriptions import Subscription, SubscriptionStore
from service.tenancy import Tenant
from service.usecases import subscriptions as uc
from service.usecases.delivery import policy_of

__all__ = ["SUBSCRIPTIONS", "install_subscriptions"]

log = structlog.get_logger("service.entrypoints.api.subscriptions")

routes = web.RouteTableDef()


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
        out = subscription_out(sub, SubscriptionCreatedOut)  # the stored answer: secret null
        log.info("subscription_created", subscription=sub.id)
        return json_response(dump(out), 201, headers={"Location": f"{request.path}/{sub.id}"})

    response = await idempotent(request, caller, canonical_body(raw), action)
    return _with_secret(response, made[0] if made else None)


@routes.get(SUBSCRIPTIONS)
async def list_all(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    subs = await _store(caller).all()
    return json_response(dump(SubscriptionListOut(items=[subscription_out(s) for s in subs])))


@routes.get(ONE)
async def read_one(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    parse_query(request, NoQuery)
    return json_response(dump(subscription_out(await _one(request, caller))))


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
        return json_response(dump(subscription_out(fresh)))

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
    page = DeliveryPageOut(items=[delivery_out(r) for r in records], next_cursor=more)
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
    describe_subscriptions()
