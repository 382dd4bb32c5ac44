"""The form bodies Koban posts to the webhooks, as pydantic models.

Field aliases are Koban's own parameter names; every other field of a form is ignored. An
empty value counts as absent (Koban's forms may carry empty fields rather than omit them).
Identifiers are bounded and refuse control characters, `/` and `|`; `Rank` is an optional
hint; instants are read by the API's own date parser (`wire.koban_instant`: UNIX seconds or
milliseconds, `/Date(ms)/`, ISO-8601), a fraction rounded up. The rules and their reasons:
docs/koban-wire.md, "How the service reads the webhook forms".
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from service.koban.wire import koban_instant

__all__ = [
    "OptionCancelledForm",
    "OptionExpiredForm",
    "OptionPlacedForm",
    "OptionProlongedForm",
    "ReservationValidatedForm",
    "ReservationWithdrawnForm",
    "WebhookForm",
]

MAX_IDENTIFIER = 200
# Before 5000-01-01T00:00:00Z (as the API's instants): an expiry is rounded up to the next
# tick and must still be writable as ISO-8601 in events (9999-12-31T23:59:59Z, rounded up,
# is not), and Koban's wire takes UNIX seconds below 10^11.
_MAX_INSTANT = 95617583999
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RANKS = {"1": 1, "2": 2}


def _blank_to_none(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _identifier(value: object) -> object:
    value = _blank_to_none(value)
    if isinstance(value, str):
        if len(value) > MAX_IDENTIFIER:
            raise ValueError(f"longer than {MAX_IDENTIFIER} characters")
        if _CONTROL.search(value):
            raise ValueError("contains control characters")
        if "/" in value or "|" in value:
            # As the API's guids: "/" and "|" separate the members of Redis indexes.
            raise ValueError("contains '/' or '|'")
    return value


def _rank(value: object) -> object:
    value = _blank_to_none(value)
    if value is None:
        return None
    if isinstance(value, str) and value in _RANKS:
        return _RANKS[value]
    raise ValueError("must be 1 or 2")


def _instant(value: object) -> object:
    value = _blank_to_none(value)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a date")
    try:
        instant = koban_instant(value)
    except ValueError:
        raise ValueError("must be a UNIX timestamp, /Date(ms)/ or ISO-8601") from None
    if instant is None:
        return None
    seconds = math.ceil(instant)
    if not 0 < seconds <= _MAX_INSTANT:
        raise ValueError("timestamp out of range")
    return seconds


Identifier = Annotated[str, BeforeValidator(_identifier)]
OptionalIdentifier = Annotated[str | None, BeforeValidator(_identifier)]
RankHint = Annotated[int | None, BeforeValidator(_rank)]
Instant = Annotated[int, BeforeValidator(_instant)]
OptionalInstant = Annotated[int | None, BeforeValidator(_instant)]


class WebhookForm(BaseModel):
    """What every webhook names: the lot (its extcode, and Koban's guid when given)."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_by_name=False)

    extcode: Identifier = Field(alias="Deal_Extcode")
    lot_guid: OptionalIdentifier = Field(default=None, alias="Deal_Guid")


class _ThirdForm(WebhookForm):
    third_guid: Identifier = Field(alias="Third_Guid")
    third_extcode: OptionalIdentifier = Field(default=None, alias="Third_Extcode")


class OptionPlacedForm(_ThirdForm):
    """Koban's "Après la pose d'option"."""

    rank: RankHint = Field(default=None, alias="Rank")
    exp_date: Instant = Field(alias="ExpDate")


class OptionCancelledForm(_ThirdForm):
    """Koban's "Après une annulation d'option"."""

    rank: RankHint = Field(default=None, alias="Rank")


class OptionProlongedForm(_ThirdForm):
    """Koban's "Après une prolongation d'option": `ExpDate` (expiry) and `PrgDate`
    (prolongation), read together by `prolonged_deadline`."""

    rank: RankHint = Field(default=None, alias="Rank")
    exp_date: OptionalInstant = Field(default=None, alias="ExpDate")
    prg_date: Instant = Field(alias="PrgDate")


class OptionExpiredForm(_ThirdForm):
    """Koban's "Expiration d'option" (no rank, no date)."""


class ReservationValidatedForm(WebhookForm):
    """Koban's "Validation d'un dossier de réservation": the lot is `Lot_Code` / `DealId`."""

    extcode: Identifier = Field(alias="Lot_Code")
    lot_guid: OptionalIdentifier = Field(default=None, alias="DealId")
    third_guid: OptionalIdentifier = Field(default=None, alias="ThirdId")
    prereservation_guid: OptionalIdentifier = Field(default=None, alias="_id")


class ReservationWithdrawnForm(WebhookForm):
    """Koban's "Désistement d'un dossier de réservation" (names no third)."""
