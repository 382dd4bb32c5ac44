"""The subscription routes' shapes: their paths, error codes, request and answer models
(pydantic, camelCase on the wire) and the conversions from the stored records."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from service.entrypoints.api.models import Instant, InstantIn, Limit, Text, _In, _Out
from service.entrypoints.api.routes_events import StreamId
from service.entrypoints.api.routes_lots import BASE
from service.storage.subscriptions import DeliveryRecord, Subscription
from service.usecases import subscriptions as uc

SUBSCRIPTIONS = BASE + "/subscriptions"
ONE = SUBSCRIPTIONS + "/{subscription}"
SUBSCRIPTION_NOT_FOUND = "SUBSCRIPTION_NOT_FOUND"
SUBSCRIPTIONS_UNAVAILABLE = "SUBSCRIPTIONS_UNAVAILABLE"

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


def subscription_out(
    sub: Subscription, model: type[SubscriptionOut] = SubscriptionOut
) -> SubscriptionOut:
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


def delivery_out(record: DeliveryRecord) -> DeliveryOut:
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
