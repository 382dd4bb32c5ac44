"""Koban's answers to option writes and ``GetLotStatus``: the common envelope (success,
error code, message) and a lot's status, read case-insensitively.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.koban.wire.dates import from_unix
from service.koban.wire.values import as_bool, as_text, fold_keys, normalise_error_code


class WireAnswer(BaseModel):
    """Base for parsed answers: Koban's names as aliases, matched case-insensitively.

    ``_KEYS`` maps each lower-cased wire key to a field name; keys not listed are ignored.
    Models can also be built by field name (``populate_by_name``), e.g. in tests.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
    _KEYS: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _case_insensitive(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            lowered = str(key).lower()
            name = cls._KEYS.get(lowered)
            if name is None and lowered in cls.model_fields:
                name = lowered
            if name is None:
                continue
            out.setdefault(name, value)
        return out


class LotStatus(WireAnswer):
    """GetLotStatus: ``Result`` 0 free, 1 optioned (``MaxRank`` 1 or 2), -1 unknown lot,
    -2 pre-reserved, -3 two options; ``EndDate`` = rank 1's expiry (UNIX seconds)."""

    _KEYS: ClassVar[dict[str, str]] = {
        "result": "result",
        "maxrank": "max_rank",
        "enddate": "end_date",
    }

    result: int = Field(validation_alias="Result")
    max_rank: int = Field(default=0, validation_alias="MaxRank")
    end_date: int | None = Field(default=None, validation_alias="EndDate")

    @field_validator("max_rank", mode="before")
    @classmethod
    def _rank(cls, value: Any) -> Any:
        return 0 if value is None else value

    @field_validator("end_date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> int | None:
        return from_unix(value)


class KobanAnswer(WireAnswer):
    """The answer to a write: ``success`` and, on a refusal, the normalised code."""

    _KEYS: ClassVar[dict[str, str]] = {
        "success": "success",
        "errorcode": "error_code",
        "error_code": "error_code",
        "code": "error_code",
        "message": "message",
        "errors": "message",
        "error": "message",
        "guid": "guid",
        "result": "result",
    }

    success: bool
    error_code: str | None = Field(default=None, validation_alias="errorcode")
    message: str | None = Field(default=None, validation_alias="Message")
    guid: str | None = Field(default=None, validation_alias="Guid")
    result: str | None = Field(default=None, validation_alias="Result")

    @property
    def new_guid(self) -> str | None:
        """The id of what a write created: ``Result`` (what Koban's public clients read),
        else a ``Guid`` key (tolerated; `koban check` reports which one came)."""
        return self.result or self.guid

    @field_validator("result", mode="before")
    @classmethod
    def _result(cls, value: Any) -> str | None:
        if isinstance(value, bool) or value in (None, ""):
            return None
        return str(value) if isinstance(value, str | int) else None

    @field_validator("success", mode="before")
    @classmethod
    def _success(cls, value: Any) -> bool:
        return as_bool(value)

    @field_validator("error_code", mode="before")
    @classmethod
    def _code(cls, value: Any) -> str | None:
        return normalise_error_code(value)

    @field_validator("message", mode="before")
    @classmethod
    def _message(cls, value: Any) -> str | None:
        return as_text(value)

    @field_validator("guid", mode="before")
    @classmethod
    def _guid(cls, value: Any) -> str | None:
        return None if value in (None, "") else str(value)


STANDARD_STATUSES = frozenset({"LIBRE", "OPTION", "PRERESV", "RESV", "BLOQUE"})


def status_code(value: Any) -> str:
    """``"LIBRE"`` or ``{"Code": "LIBRE", "Label": …}`` → ``"LIBRE"``; standard codes are
    upper-cased, custom codes kept as Koban spells them."""
    if isinstance(value, Mapping):
        folded = fold_keys(value)
        value = folded.get("code") or folded.get("label")
    if value is None:
        raise ValueError("lot without a status")
    text = str(value).strip()
    if not text:
        raise ValueError("lot with an empty status")
    return text.upper() if text.upper() in STANDARD_STATUSES else text
