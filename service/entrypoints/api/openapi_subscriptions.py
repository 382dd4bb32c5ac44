"""Descriptions of the subscription routes (`routes_subscriptions`), registered with
`describe` when the routes are installed: admin scope, tag subscriptions."""

from __future__ import annotations

from pydantic import BaseModel

from service.entrypoints.api import errors as e
from service.entrypoints.api.models import NoQuery
from service.entrypoints.api.openapi import Operation, Reply, describe
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
    SubscriptionOut,
    SubscriptionPatch,
)

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


def describe_subscriptions() -> None:
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
