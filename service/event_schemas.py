"""Every event type the service publishes, with the JSON Schema of its `data`: one pydantic
model per type (`EVENT_SCHEMAS`), the one catalogue of event types (subscriptions' type
patterns are checked against it).

Served at ``GET /v1/schemas/events/{type}``; every CloudEvent names its schema in
`dataschema` (`service.storage.events.dataschema`). A new event type is one model here and
one line in `EVENT_SCHEMAS`; a test runs a mixed workload and validates every event of
the stream against the schema served for its type.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from service.storage.events import dataschema
from statecharts.model import Actor

__all__ = ["DIRECT_ONLY", "EVENT_SCHEMAS", "event_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Instants leave the service as ISO-8601 UTC with Z (micro-seconds only when non-zero).
Instant: TypeAlias = Annotated[
    str,
    StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
        }
    ),
]
Rank: TypeAlias = Annotated[int, Field(ge=1, le=2)]


class _Data(BaseModel):
    """A `data` object: every key named, nothing else (a new key is a schema change)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OptionData(_Data):
    """An option as it stands after the event (§2.2 fields) and who acted."""

    optionId: str
    rank: Rank
    thirdGuid: str | None = Field(description="null for an opaque placeholder")
    partnerGuid: str | None
    placedAt: Instant
    deadline: Instant | None = Field(description="null when Koban gave no date")
    effectiveExpiry: Instant | None = Field(description="the tick the option ends at")
    deadlineSource: Literal["koban", "estimated"]
    prolonged: bool
    actor: Actor


class OptionPlacedData(OptionData):
    opaque: bool = Field(
        default=False, description="true: a placeholder for an option Koban reports"
    )
    wasOpaque: bool = Field(
        default=False, description="true: a placeholder identified by Koban's webhook"
    )


class OptionProlongedData(OptionData):
    forced: bool = Field(
        default=False, description="true: Koban's prolongation applied over local rules"
    )


class DeadlineConfirmedData(OptionData):
    previousDeadline: Instant | None
    previousEffectiveExpiry: Instant | None


class LotImportedData(_Data):
    program: str | None = Field(description="null when a webhook named a lot not synced yet")
    label: str | None
    status: str = Field(description="Koban's status label")
    actor: Actor
    link: str | None = Field(default=None, description="the main lot of a secondary lot")
    pendingSync: bool = Field(default=False, description="true: created by a webhook")
    webhook: str | None = Field(default=None, description="the webhook that created it")


class LotPrereservedData(_Data):
    thirdGuid: str
    partnerGuid: str | None
    price: float = Field(description="euros")
    deposit: float = Field(description="euros")
    convertedOptionId: str | None
    actor: Actor


class LotReservedData(_Data):
    thirdGuid: str | None
    drift: bool = Field(description="true when the lot was not PRERESV locally")
    actor: Actor
    prereservationGuid: str | None = Field(
        default=None, description="Koban's préréservation, when its webhook named it"
    )


class LotWithdrawnData(_Data):
    thirdGuid: str | None
    actor: Actor


class LotStatusChangedData(_Data):
    from_: str = Field(alias="from")
    to: str
    actor: Actor


class DriftDetectedData(BaseModel):
    """`reason` says what disagreed; the other keys depend on it (local and Koban's view)."""

    model_config = ConfigDict(extra="allow")

    reason: str
    actor: Actor


class IntentResolvedData(_Data):
    intentId: str
    outcome: Literal["placed", "not_placed", "dropped"]
    rank: Rank
    thirdGuid: str
    partnerGuid: str | None
    optionId: str | None = Field(default=None, description="the option, when placed")
    actor: Actor


# Every event type (with its "koban." prefix) and the model of its `data`.
# Types sent to a subscriber directly, never written to the stream.
DIRECT_ONLY = frozenset({"koban.subscription.ping"})


class SubscriptionPingData(_Data):
    """`koban.subscription.ping`: sent to one subscriber on demand, never in the stream."""

    subscription_id: str = Field(alias="subscriptionId")


EVENT_SCHEMAS: dict[str, type[BaseModel]] = {
    "koban.option.placed": OptionPlacedData,
    "koban.option.prolonged": OptionProlongedData,
    "koban.option.promoted": OptionData,
    "koban.option.expired": OptionData,
    "koban.option.cancelled": OptionData,
    "koban.option.converted": OptionData,
    "koban.option.superseded": OptionData,
    "koban.option.expiring": OptionData,
    "koban.option.deadline_confirmed": DeadlineConfirmedData,
    "koban.lot.imported": LotImportedData,
    "koban.lot.prereserved": LotPrereservedData,
    "koban.lot.reserved": LotReservedData,
    "koban.lot.withdrawn": LotWithdrawnData,
    "koban.lot.status_changed": LotStatusChangedData,
    "koban.sync.drift_detected": DriftDetectedData,
    "koban.intent.resolved": IntentResolvedData,
    "koban.subscription.ping": SubscriptionPingData,
}


@cache
def event_schema(type_: str, base_url: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of `type_`'s data; `$id` is the events' `dataschema`."""
    model = EVENT_SCHEMAS[type_]
    schema = model.model_json_schema(by_alias=True)
    schema.pop("title", None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": dataschema(base_url, type_.removeprefix("koban.")),
        "title": f"{type_} data",
        **schema,
    }
