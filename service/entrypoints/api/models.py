"""Request and response models of the API (pydantic), and the request parsing helpers.

The same models validate requests and describe responses, so an OpenAPI document can be
generated from them later. Every instant is ISO-8601 UTC with ``Z`` on the way out; on
the way in an ISO-8601 instant with an explicit offset (``Z`` or ``+hh:mm``) is required
and kept to the whole second (a naive time would be a guess). Amounts are euros with at
most two decimals (JSON numbers or decimal strings), held as integer cents inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, cast

import orjson
from aiohttp import web
from pydantic import (
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from service.entrypoints.api.errors import field_errors, malformed, validation_failed
from statecharts.ticks import to_iso

__all__ = [
    "AvailabilityOut",
    "AvailabilityQuery",
    "CancelQuery",
    "HistoryOut",
    "LotListOut",
    "LotOut",
    "LotsQuery",
    "NoQuery",
    "OptionListOut",
    "OptionOut",
    "OptionsQuery",
    "PendingOut",
    "PendingPlacementOut",
    "PlaceOptionIn",
    "PrereservationOut",
    "PrereserveIn",
    "ProlongIn",
    "ProspectOut",
    "WithdrawIn",
    "canonical_body",
    "dump",
    "parse_body",
    "parse_query",
]

M = TypeVar("M", bound=BaseModel)

MAX_BODY = 64 * 1024
_JSON_TYPES = ("application/json",)


# --------------------------------------------------------------------------- field types


_INSTANT_END = 95617584000  # 5000-01-01T00:00:00Z


def _instant_in(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 instant such as '2026-11-23T10:00:00Z'")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError("not an ISO-8601 instant") from None
    if moment.utcoffset() is None:
        raise ValueError("an instant needs a UTC offset or Z")
    seconds = moment.timestamp()
    if not math.isfinite(seconds):  # pragma: no cover - fromisoformat bounds years
        raise ValueError("not a finite instant")
    if not 0 <= seconds < _INSTANT_END:
        # Koban's wire takes UNIX seconds below 10^11, and an instant stored here must
        # stay writable as ISO-8601 once rounded up to a tick.
        raise ValueError("an instant must be from 1970-01-01 to 4999-12-31 (UTC)")
    return math.floor(seconds)


_DATE_TIME = WithJsonSchema({"type": "string", "format": "date-time"})
InstantIn: TypeAlias = Annotated[int, BeforeValidator(_instant_in), _DATE_TIME]
Instant: TypeAlias = Annotated[int, PlainSerializer(to_iso, return_type=str), _DATE_TIME]
# Koban guids and CRM ids: no spaces, no "/" or "|" (they separate index members).
Guid: TypeAlias = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~:@+=-]+$")
]
Rank: TypeAlias = Annotated[int, Field(ge=1, le=2, strict=True)]
Euros: TypeAlias = Annotated[Decimal, Field(ge=0, le=Decimal("99999999999.99"), decimal_places=2)]
Limit: TypeAlias = Annotated[int, Field(ge=1, le=1000)]
Text: TypeAlias = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value())


# --------------------------------------------------------------------------- requests


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaceOptionIn(_In):
    third_guid: Guid = Field(alias="thirdGuid")
    partner_guid: Guid | None = Field(default=None, alias="partnerGuid")
    rank: Rank | None = None


class ProlongIn(_In):
    until: InstantIn
    third_guid: Guid | None = Field(default=None, alias="thirdGuid")


class PrereserveIn(_In):
    third_guid: Guid = Field(alias="thirdGuid")
    price: Euros
    deposit: Euros
    partner_guid: Guid | None = Field(default=None, alias="partnerGuid")


class WithdrawIn(_In):
    third_guid: Guid = Field(alias="thirdGuid")


class LotsQuery(_In):
    status: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    program: Text | None = None
    expiring_before: InstantIn | None = Field(default=None, alias="expiringBefore")
    modified_after: InstantIn | None = Field(default=None, alias="modifiedAfter")
    limit: Limit = 100
    cursor: Annotated[str, StringConstraints(max_length=1024)] | None = None


class OptionsQuery(_In):
    third_guid: Guid | None = Field(default=None, alias="thirdGuid")
    partner_guid: Guid | None = Field(default=None, alias="partnerGuid")
    expiring_before: InstantIn | None = Field(default=None, alias="expiringBefore")
    limit: Limit = 100
    cursor: Annotated[str, StringConstraints(max_length=1024)] | None = None


class AvailabilityQuery(_In):
    third_guid: Guid | None = Field(default=None, alias="thirdGuid")
    source: Literal["local", "koban"] = "local"


class NoQuery(_In):
    """A route without query parameters (unknown ones are refused like everywhere)."""


class CancelQuery(_In):
    third_guid: Guid | None = Field(default=None, alias="thirdGuid")


# --------------------------------------------------------------------------- responses


class _Out(BaseModel):
    # Python names inside, camelCase on the wire (and in the JSON schema).
    model_config = ConfigDict(alias_generator=AliasGenerator(serialization_alias=to_camel))


class OptionOut(_Out):
    extcode: str
    option_id: str
    rank: int
    third_guid: str | None
    partner_guid: str | None
    placed_at: Instant
    deadline: Instant | None
    effective_expiry: Instant | None
    deadline_source: Literal["koban", "estimated"]
    prolonged: bool
    opaque: bool
    redacted: bool = False


class PendingPlacementOut(_Out):
    intent_id: str
    rank: int
    third_guid: str | None
    partner_guid: str | None
    created_at: Instant
    redacted: bool = False


class PrereservationOut(_Out):
    third_guid: str | None
    partner_guid: str | None
    price: float
    deposit: float
    at: Instant
    redacted: bool = False
    validated: bool = False  # placed as a complete dossier (ncPreresv/AddValid)


Action: TypeAlias = Literal["place", "prolong", "cancel", "prereserve", "withdraw"]


class LotOut(_Out):
    extcode: str
    status: str
    state_path: list[str]
    version: int
    program: str | None
    label: str | None
    secondary: bool
    link: str | None
    modified_at: Instant | None
    options: list[OptionOut]
    pending_placements: list[PendingPlacementOut]
    prereservation: PrereservationOut | None
    next_tick: Instant | None
    allowed_actions: list[Action]


class KobanStatusOut(_Out):
    result: int
    max_rank: int
    end_date: Instant | None


class AvailabilityOut(_Out):
    extcode: str
    result: int
    max_rank: int
    end_date: Instant | None
    can_place: bool
    next_rank: int | None
    reason: str | None
    status: str | None
    koban: KobanStatusOut | None = None
    drift: bool | None = None


class LotListOut(_Out):
    items: list[LotOut]
    next_cursor: str | None


class OptionListOut(_Out):
    items: list[OptionOut]
    next_cursor: str | None


class HistoryOut(_Out):
    extcode: str
    items: list[dict[str, Any]]


class PendingOut(_Out):
    status: Literal["pending", "unknown"]
    intent_id: str
    extcode: str
    rank: int | None
    third_guid: str


class ProspectOut(_Out):
    third_guid: str
    options: list[OptionOut]
    pending_placements: list[dict[str, Any]]
    max_options: int
    remaining: int


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------- parsing


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 400 when missing, not JSON, too large or mistyped."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise malformed(f"The body exceeds {MAX_BODY} bytes.")
    content_type = request.content_type
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise malformed("The body must be JSON (Content-Type: application/json).")
    raw = await request.read()  # the app's client_max_size bounds chunked bodies too
    if len(raw) > MAX_BODY:
        raise malformed(f"The body exceeds {MAX_BODY} bytes.")
    if not raw.strip():
        raise malformed("A JSON body is required.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise malformed("The body is not valid JSON.") from None


def validate(model: type[M], data: Any, where: str = "") -> M:
    if not isinstance(data, dict):
        raise validation_failed([{"field": where or "body", "message": "must be a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(field_errors(exc)) from None


async def parse_body(request: web.Request, model: type[M]) -> tuple[M, Any]:
    """(the validated model, the parsed JSON as sent)."""
    data = await read_json(request)
    return validate(model, data), data


# Frozen query models validated from an empty query, per model: most reads have none.
_EMPTY_QUERIES: dict[type[BaseModel], BaseModel] = {}


def parse_query(request: web.Request, model: type[M]) -> M:
    query = request.rel_url.query
    if not query and model.model_config.get("frozen"):
        empty = _EMPTY_QUERIES.get(model)
        if empty is None:  # validated once (an invalid empty query raises every time)
            empty = _EMPTY_QUERIES[model] = validate(model, {})
        return cast(M, empty)
    twice = sorted({k for k in query if len(query.getall(k)) > 1})
    if twice:
        raise validation_failed([{"field": k, "message": "given more than once"} for k in twice])
    return validate(model, dict(query))


def canonical_body(data: Any, query: Mapping[str, str] | None = None) -> bytes:
    """What an idempotent replay must match: the JSON body (keys sorted) and the query."""
    return orjson.dumps(
        {"body": data, "query": sorted((query or {}).items())}, option=orjson.OPT_SORT_KEYS
    )


def rank_of(request: web.Request) -> int:
    text = request.match_info["rank"]
    if not text.isdigit() or len(text) > 3:
        raise validation_failed([{"field": "rank", "message": "must be a positive integer"}])
    return int(text)
