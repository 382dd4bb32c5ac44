"""Administering webhook subscriptions: create, change, rotate the secret, replay, ping.

The HTTP routes (`service.entrypoints.api.routes_subscriptions`) call these; the delivering
itself is `service.usecases.delivery`. Type patterns are exact known types, ``prefix.*``
over known types, or ``*``. A secret is shown once, when made; a rotated-out secret keeps
signing beside the new one for `ROTATION_OVERLAP_S` of the tenant's clock.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Sequence

import aiohttp
import orjson

from service.event_schemas import EVENT_SCHEMAS
from service.outbound.signing import SecretBox, new_secret, signature_headers
from service.outbound.targets import check_url, resolve_and_check
from service.storage.events import iso, source
from service.storage.subscriptions import DeliveryRecord, SealedSecret, Subscription
from service.tenancy import Tenant
from service.usecases.delivery import policy_of, send, webhook_id

__all__ = [
    "EVENT_TYPES",
    "PING_TYPE",
    "ROTATION_OVERLAP_S",
    "create_subscription",
    "ping",
    "rotate_secret",
    "target_refusal",
    "type_error",
]

PING_TYPE = "koban.subscription.ping"
ROTATION_OVERLAP_S = 24 * 3600
# The one catalogue of event types, with their schemas.
EVENT_TYPES = frozenset(EVENT_SCHEMAS)


def type_error(pattern: str) -> str | None:
    """Why `pattern` is not a type pattern a subscription may hold (None: it is)."""
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(t.startswith(prefix) for t in EVENT_TYPES):
            return None
        return f"no event type starts with {prefix!r}"
    return "not a known event type, a 'prefix.*' pattern or '*'"


async def target_refusal(tenant: Tenant, url: str) -> str | None:
    """Why `url` cannot be this tenant's target now (URL rules, then its addresses)."""
    policy = policy_of(tenant.settings)
    return check_url(url, policy) or await resolve_and_check(url, policy)


def _box(tenant: Tenant) -> SecretBox:
    if tenant.secret_box is None:
        raise LookupError("no subscription key is configured")
    return tenant.secret_box


async def create_subscription(
    tenant: Tenant, name: str, url: str, types: Sequence[str]
) -> tuple[Subscription, str]:
    """A new active subscription (events from now on) and its secret, in clear once."""
    assert tenant.subscriptions is not None
    secret = new_secret()
    sub = Subscription(
        id=tenant.subscriptions.new_id(),
        name=name,
        url=url,
        types=list(dict.fromkeys(types)),
        created_at=tenant.clock.now(),
        secrets=[SealedSecret(_box(tenant).seal(secret))],
    )
    await tenant.subscriptions.create(sub)
    return sub, secret


async def rotate_secret(tenant: Tenant, sub: Subscription) -> str | None:
    """A new secret; the current one(s) sign beside it until the overlap ends. None when
    the subscription was deleted meanwhile."""
    assert tenant.subscriptions is not None
    now = tenant.clock.now()
    secret = new_secret()
    ending = now + ROTATION_OVERLAP_S
    kept = [
        SealedSecret(s.sealed, min(s.until, ending) if s.until is not None else ending)
        for s in sub.live_secrets(now)
    ]
    sub.secrets = [SealedSecret(_box(tenant).seal(secret)), *kept]
    return secret if await tenant.subscriptions.save_config(sub) else None


def ping_event(tenant: Tenant, sub: Subscription, now: int) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": "ping-" + _random.token_hex(8),
            "source": source(tenant.name),
            "type": PING_TYPE,
            "subject": sub.id,
            "time": iso(now),
            "datacontenttype": "application/json",
            "data": {"subscriptionId": sub.id},
        }
    )


async def ping(tenant: Tenant, sub: Subscription, session: aiohttp.ClientSession) -> DeliveryRecord:
    """One signed ``koban.subscription.ping``, sent now (not through the stream), logged."""
    assert tenant.subscriptions is not None
    now = tenant.clock.now()
    body = ping_event(tenant, sub, now)
    event = orjson.loads(body)
    secrets = [_box(tenant).open(s.sealed) for s in sub.live_secrets(now)]
    headers = signature_headers(webhook_id(tenant.name, event["id"]), body.decode(), secrets)
    settings = tenant.settings
    result = await send(
        session,
        sub.url,
        body,
        headers,
        settings.delivery_timeout.fixed_seconds(),
        policy_of(settings),
    )
    record = DeliveryRecord(
        event["id"],
        PING_TYPE,
        1,
        tenant.clock.now(),
        result.status,
        result.error,
        result.duration_ms,
        None,
    )
    await tenant.subscriptions.log(sub.id, record, settings.delivery_log_size)
    return record
