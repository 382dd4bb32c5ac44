"""Koban's wire shapes, in one place (docs/koban-wire.md).

Everything that depends on how Koban spells things lives here: verbs and paths, query
parameter names, the nesting of request bodies (``Deal.Extcode``, ``Third.Guid``…), field
names of answers, and the conversions (euros with two decimals, UNIX seconds vs
milliseconds). Answers are parsed case-insensitively and error codes normalised to two
digits (``5`` → ``"05"``). The rest of the service only sees the parsed results. Pure: no
I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One Koban method: a metrics name, the HTTP verb and the path under the base URL."""

    name: str
    verb: Literal["GET", "POST"]
    path: str

    @property
    def is_write(self) -> bool:
        return self.verb != "GET"


GET_LOT_STATUS = Endpoint("GetLotStatus", "GET", "/ncOption/GetLotStatus")
OPTION_ADD = Endpoint("Add", "POST", "/ncOption/Add")
OPTION_PROLONG = Endpoint("Prolong", "POST", "/ncOption/Prolong")
OPTION_UNDO = Endpoint("Undo", "POST", "/ncOption/Undo")
PRERESV_ADD = Endpoint("PreresvAdd", "POST", "/ncPreresv/Add")
PRERESV_DESIST = Endpoint("PreresvDesist", "POST", "/ncPreresv/Desist")
DEAL_GET_UPDATED = Endpoint("GetUpdated", "GET", "/ncDeal/GetUpdated")
DEAL_GET_UPDATED_PROCESS = Endpoint("GetUpdatedProcess", "GET", "/ncDeal/GetUpdatedProcess")
DEAL_PROCESS_GET_ALL = Endpoint("DealProcessGetAll", "GET", "/ncDealProcess/GetAll")
THIRD_POST_ONE = Endpoint("ThirdPostOne", "POST", "/ncThird/PostOne")

HEADER_API_KEY = "X-ncApi"
HEADER_USER_KEY = "X-ncUser"

# --------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------

MS_THRESHOLD = 10**11
"""A timestamp above this is in milliseconds (10^11 s is the year 5138)."""

_DOTNET_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")


def to_unix(seconds: int) -> int:
    """An outgoing date: UNIX seconds, checked (a millisecond value is a caller bug)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"UNIX seconds must be an int, got {type(seconds).__name__}")
    if seconds < 0 or seconds > MS_THRESHOLD:
        raise ValueError(f"{seconds} is not a UNIX time in seconds")
    return seconds


NO_DATE_MS = -62135596800000
"""``/Date(-62135596800000)/`` is .NET's ``DateTime.MinValue`` (year 1): Koban's "no date"."""


def koban_instant(value: Any) -> float | None:
    """Any date Koban sends → UNIX seconds (fraction kept), or None when absent.

    The one parser for API answers and webhook forms: numbers or digit strings (seconds,
    or milliseconds above 10^11), .NET ``/Date(ms)/`` (year 1 = no date) and ISO-8601
    (naive means UTC: account.md's ``Updated`` agrees with its ``DUpdated`` read so).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not text.isascii():
            # float() and fromisoformat() take other scripts' digits; Koban writes ASCII.
            raise ValueError(f"not a timestamp: {value!r}")
        dotnet = _DOTNET_DATE.match(text)
        if dotnet:
            ms = int(dotnet.group(1))
            return None if ms <= NO_DATE_MS else ms / 1000
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not a timestamp: {value!r}") from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"not a timestamp: {value!r}")
    return number / 1000 if number > MS_THRESHOLD else number


def from_unix(value: Any) -> int | None:
    """An incoming timestamp → whole UNIX seconds (`koban_instant`, floored), or None."""
    seconds = koban_instant(value)
    return None if seconds is None else math.floor(seconds)


def cents_to_euros(cents: int) -> float:
    """Amounts go to Koban as euros with two decimals; the service counts in cents."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"amount in cents must be an int, got {type(cents).__name__}")
    if cents < 0:
        raise ValueError("amount must not be negative")
    return round(cents / 100, 2)


def normalise_error_code(value: Any) -> str | None:
    """``5`` / ``"5"`` / ``"05"`` → ``"05"``; empty → None; other text kept (upper-cased)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value:02d}"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):02d}"
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return f"{int(text):02d}"
    return text.upper()


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "ok"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _as_text(value: Any) -> str | None:
    """Message / Errors: a string, a list of strings or of {Message: ...} objects."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        folded = {str(k).lower(): v for k, v in value.items()}
        for key in ("message", "label", "error"):
            if key in folded:
                return _as_text(folded[key])
        return str(dict(value))
    if isinstance(value, list | tuple):
        parts = [text for item in value if (text := _as_text(item))]
        return "; ".join(parts) or None
    return str(value)


def _fold(data: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys lower-cased (the first spelling wins when two differ only by case)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.setdefault(str(key).lower(), value)
    return out


# --------------------------------------------------------------------------------------
# Parsed answers
# --------------------------------------------------------------------------------------


class _Answer(BaseModel):
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


class LotStatus(_Answer):
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


class KobanAnswer(_Answer):
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
        return _as_bool(value)

    @field_validator("error_code", mode="before")
    @classmethod
    def _code(cls, value: Any) -> str | None:
        return normalise_error_code(value)

    @field_validator("message", mode="before")
    @classmethod
    def _message(cls, value: Any) -> str | None:
        return _as_text(value)

    @field_validator("guid", mode="before")
    @classmethod
    def _guid(cls, value: Any) -> str | None:
        return None if value in (None, "") else str(value)


STANDARD_STATUSES = frozenset({"LIBRE", "OPTION", "PRERESV", "RESV", "BLOQUE"})


def _status_code(value: Any) -> str:
    """``"LIBRE"`` or ``{"Code": "LIBRE", "Label": …}`` → ``"LIBRE"``; standard codes are
    upper-cased, custom codes kept as Koban spells them."""
    if isinstance(value, Mapping):
        folded = _fold(value)
        value = folded.get("code") or folded.get("label")
    if value is None:
        raise ValueError("lot without a status")
    text = str(value).strip()
    if not text:
        raise ValueError("lot with an empty status")
    return text.upper() if text.upper() in STANDARD_STATUSES else text


class KobanLot(BaseModel):
    """A lot from GetUpdated. ``status`` is one of ``STANDARD_STATUSES`` or a custom code
    (``custom`` is then true); ``won`` comes from ``Result: "WON"``; ``amount`` is
    ``Amountprev`` in euros; ``secondary`` from ``Type``; ``updated`` in UNIX seconds."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    guid: str | None = Field(default=None, validation_alias="Guid")
    extcode: str = Field(validation_alias="Extcode")
    label: str | None = Field(default=None, validation_alias="Label")
    status: str = Field(validation_alias="Status")
    custom: bool = False
    won: bool = False
    program_code: str | None = None
    program_label: str | None = None
    amount: float | None = Field(default=None, validation_alias="Amountprev")
    secondary: bool = False
    link: str | None = Field(default=None, validation_alias="Link")
    updated: int | None = Field(default=None, validation_alias="Updated")

    @model_validator(mode="before")
    @classmethod
    def _from_wire(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        folded = _fold(data)
        out: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in folded:
                out[name] = folded[name]
        for key in ("guid", "extcode", "label", "link", "updated", "status"):
            if key in folded:
                out[key] = folded[key]
        if folded.get("dupdated") not in (None, ""):
            out["updated"] = folded["dupdated"]  # the float beside a naive ISO `Updated`
        if "amountprev" in folded:
            out["amount"] = folded["amountprev"]
        if "status" in out:
            out["status"] = _status_code(out["status"])
            out.setdefault("custom", out["status"] not in STANDARD_STATUSES)
        if "result" in folded:
            out["won"] = str(folded["result"] or "").strip().upper() == "WON"
        process = folded.get("process")
        if isinstance(process, Mapping):
            proc = _fold(process)
            code = proc.get("code")
            out.setdefault("program_code", proc.get("extcode") if code in (None, "") else code)
            out.setdefault("program_label", proc.get("label") or folded.get("processlabel"))
        if "type" in folded:
            out["secondary"] = str(folded["type"] or "").strip().upper() == "SECONDARY"
        for key in ("guid", "link", "label", "program_code", "program_label"):
            if key in out and out[key] is not None:
                out[key] = str(out[key]) or None
        if "extcode" in out and out["extcode"] is not None:
            out["extcode"] = str(out["extcode"])
        return out

    @field_validator("updated", mode="before")
    @classmethod
    def _updated(cls, value: Any) -> int | None:
        return from_unix(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Any:
        return None if value in (None, "") else value

    @property
    def amount_cents(self) -> int | None:
        return None if self.amount is None else round(self.amount * 100)


@dataclass(frozen=True, slots=True)
class SkippedDeal:
    """A deal of a page that is not a lot the service can mirror, and why."""

    reason: Literal["no_extcode", "no_status", "other_process", "unreadable"]
    ref: str | None  # its Guid or Label, for the log


def _deal_ref(item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return None
    folded = _fold(item)
    ref = folded.get("guid") or folded.get("label")
    return None if ref in (None, "") else str(ref)[:100]


def read_deal(item: Any) -> KobanLot | SkippedDeal:
    """One deal of a page → a lot, or the reason it is skipped (one odd deal never fails
    the page: Koban's deal structure allows a null ``Extcode`` and any process's steps)."""
    if isinstance(item, Mapping):
        folded = _fold(item)
        if folded.get("extcode") in (None, ""):
            return SkippedDeal("no_extcode", _deal_ref(item))
        status = folded.get("status")
        if isinstance(status, Mapping):
            inner = _fold(status)
            status = inner.get("code") or inner.get("label")
        if status in (None, "") or (isinstance(status, str) and not status.strip()):
            return SkippedDeal("no_status", _deal_ref(item))
    try:
        return KobanLot.model_validate(item)
    except (ValidationError, ValueError, TypeError):
        return SkippedDeal("unreadable", _deal_ref(item))


class DealPage(_Answer):
    """One page of GetUpdated / GetUpdatedProcess: ``Length`` = total, ``List`` = lots;
    ``skipped`` the deals that are not readable lots, ``raw_count`` all deals listed."""

    _KEYS: ClassVar[dict[str, str]] = {"length": "length", "list": "items"}

    length: int = Field(validation_alias="Length")
    items: list[KobanLot] = Field(default_factory=list, validation_alias="List")
    skipped: list[SkippedDeal] = Field(default_factory=list)
    raw_count: int = 0

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        folded = _fold(data)
        if "items" in folded and "list" not in folded:
            return data  # built by field name (tests), not read from the wire
        raw = folded.get("list")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ValueError("List must be an array")
        read = [read_deal(item) for item in raw]
        return {
            "length": folded.get("length"),
            "items": [r for r in read if isinstance(r, KobanLot)],
            "skipped": [r for r in read if isinstance(r, SkippedDeal)],
            "raw_count": len(raw),
        }


class Program(_Answer):
    """A Koban deal process (programme): DealProcess GetAll. Its code is ``Extcode`` (the
    published structure has no ``Code``; a ``Code`` key is read when ``Extcode`` is absent)
    and may arrive as a number: it is text."""

    _KEYS: ClassVar[dict[str, str]] = {
        "guid": "guid",
        "extcode": "code",
        "label": "label",
        "isactive": "active",
    }

    guid: str | None = Field(default=None, validation_alias="Guid")
    code: str = Field(validation_alias="Extcode")
    label: str | None = Field(default=None, validation_alias="Label")
    active: bool = Field(default=True, validation_alias="IsActive")

    @field_validator("code", "guid", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("active", mode="before")
    @classmethod
    def _active(cls, value: Any) -> bool:
        return True if value is None else _as_bool(value)


def parse_programs(payload: Any) -> list[Program]:
    """GetAll answers a bare list; a ``{"List": [...]}`` wrapper is accepted too."""
    if isinstance(payload, Mapping):
        payload = _fold(payload).get("list")
    if not isinstance(payload, list):
        raise ValueError("DealProcess GetAll: expected a list")
    programs = []
    for item in payload:
        try:
            programs.append(Program.model_validate(item))
        except ValidationError:
            continue  # a process without a code names no deal's `Process`: nothing to match
    return programs


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON body, with Koban's names; absent optionals are omitted."""
        return self.model_dump(by_alias=True, exclude_none=True)


class GuidRef(_Request):
    guid: str = Field(serialization_alias="Guid")


class DealRef(_Request):
    extcode: str = Field(serialization_alias="Extcode")


class CodeRef(_Request):
    code: str = Field(serialization_alias="Code")


class AddBody(_Request):
    third: GuidRef = Field(serialization_alias="Third")
    deal: DealRef = Field(serialization_alias="Deal")
    date_option: int = Field(serialization_alias="DateOption")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)
    part: GuidRef | None = Field(default=None, serialization_alias="Part")


class ProlongBody(_Request):
    deal: DealRef = Field(serialization_alias="Deal")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)
    date_prolongation: int = Field(serialization_alias="DateProlongation")


class UndoBody(_Request):
    deal: DealRef = Field(serialization_alias="Deal")
    rank: int = Field(serialization_alias="Rank", ge=1, le=2)


class PreresvAddBody(_Request):
    deal: DealRef = Field(serialization_alias="Deal")
    third: GuidRef = Field(serialization_alias="Third")
    prix_vente: float = Field(serialization_alias="PrixVente")
    garantie: float = Field(serialization_alias="Garantie")
    part: GuidRef | None = Field(default=None, serialization_alias="Part")


class DesistBody(_Request):
    deal: DealRef = Field(serialization_alias="Deal")
    third: GuidRef = Field(serialization_alias="Third")


ThirdKind = Literal["PROSPECT", "CGP"]
# Account status codes (Koban's `Status{Code}`): a prospect, and a CGP ("Statut CGP (Code
# CGP)" in the immobilier doc). A tenant whose Koban names them otherwise changes them here.
STATUS_CODE_OF_KIND: dict[str, str] = {"PROSPECT": "PROSPECT", "CGP": "CGP"}
# The service's own Extcodes for thirds it creates without one from the caller.
OWN_EXTCODE_PREFIX = "ko-"
UNIQUE_PROPERTY = "Extcode"


class TagRef(_Request):
    category_code: str = Field(serialization_alias="TagCategoryCode", min_length=1)
    label: str = Field(serialization_alias="Label")


class MoreField(_Request):
    field_id: str = Field(serialization_alias="FieldId", min_length=1)
    value: str = Field(serialization_alias="Value")


class Account(_Request):
    """Koban's account structure, as ``ncThird/PostOne`` takes it (prospects and CGPs).

    ``extcode`` is required: PostOne is always sent with ``uniqueproperty=Extcode``, so a
    resend updates the same third (`own_extcode` makes one when the caller has none)."""

    label: str = Field(serialization_alias="Label", min_length=1)
    first_name: str | None = Field(default=None, serialization_alias="FirstName")
    email: str | None = Field(default=None, serialization_alias="EMail")
    phone: str | None = Field(default=None, serialization_alias="Phone")
    cell: str | None = Field(default=None, serialization_alias="Cell")
    status: CodeRef = Field(serialization_alias="Status")
    type: CodeRef | None = Field(default=None, serialization_alias="Type")
    extcode: str = Field(serialization_alias="Extcode", min_length=1)
    origin: CodeRef | None = Field(default=None, serialization_alias="Origin")
    tags: list[TagRef] | None = Field(default=None, serialization_alias="Tags")
    more_fields: list[MoreField] | None = Field(default=None, serialization_alias="MoreFields")


def own_extcode(*parts: str | None) -> str:
    """A stable Extcode from what names the person (e.g. the e-mail): the same person sent
    twice gets the same third."""
    seed = "\x1f".join((p or "").strip().lower() for p in parts)
    return OWN_EXTCODE_PREFIX + hashlib.sha256(seed.encode()).hexdigest()[:20]


def account(
    label: str,
    first_name: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    kind: ThirdKind = "PROSPECT",
    *,
    cell: str | None = None,
    extcode: str | None = None,
    type_code: str | None = None,
    origin_code: str | None = None,
    tags: list[tuple[str, str]] | None = None,
    more_fields: list[tuple[str, str]] | None = None,
) -> Account:
    """An account to post: a prospect or (``kind="CGP"``) a CGP, told by its status code."""
    return Account(
        label=label,
        first_name=first_name,
        email=email,
        phone=phone,
        cell=cell,
        status=CodeRef(code=STATUS_CODE_OF_KIND[kind]),
        type=None if type_code is None else CodeRef(code=type_code),
        extcode=extcode or own_extcode(email or "", label, first_name),
        origin=None if origin_code is None else CodeRef(code=origin_code),
        tags=None if tags is None else [TagRef(category_code=c, label=v) for c, v in tags],
        more_fields=(
            None
            if more_fields is None
            else [MoreField(field_id=f, value=v) for f, v in more_fields]
        ),
    )


def third_params() -> dict[str, str]:
    return {"uniqueproperty": UNIQUE_PROPERTY}


def _part(partner_guid: str | None) -> GuidRef | None:
    return None if partner_guid is None else GuidRef(guid=partner_guid)


def add_body(
    extcode: str, third_guid: str, rank: int, date_option: int, partner_guid: str | None = None
) -> dict[str, Any]:
    return AddBody(
        third=GuidRef(guid=third_guid),
        deal=DealRef(extcode=extcode),
        date_option=to_unix(date_option),
        rank=rank,
        part=_part(partner_guid),
    ).wire()


def prolong_body(extcode: str, rank: int, until: int) -> dict[str, Any]:
    return ProlongBody(
        deal=DealRef(extcode=extcode), rank=rank, date_prolongation=to_unix(until)
    ).wire()


def undo_body(extcode: str, rank: int) -> dict[str, Any]:
    return UndoBody(deal=DealRef(extcode=extcode), rank=rank).wire()


def preresv_add_body(
    extcode: str,
    third_guid: str,
    price_cents: int,
    deposit_cents: int,
    partner_guid: str | None = None,
) -> dict[str, Any]:
    return PreresvAddBody(
        deal=DealRef(extcode=extcode),
        third=GuidRef(guid=third_guid),
        prix_vente=cents_to_euros(price_cents),
        garantie=cents_to_euros(deposit_cents),
        part=_part(partner_guid),
    ).wire()


def desist_body(extcode: str, third_guid: str) -> dict[str, Any]:
    return DesistBody(deal=DealRef(extcode=extcode), third=GuidRef(guid=third_guid)).wire()


def lot_status_params(extcode: str) -> dict[str, str]:
    return {"extcode": extcode}


def updated_params(
    updated: int, start: int, limit: int, process_code: str | None = None
) -> dict[str, str]:
    params = {"updated": str(to_unix(updated)), "s": str(start), "l": str(limit)}
    if process_code is not None:
        params["processcode"] = process_code
    return params
