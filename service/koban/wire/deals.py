"""Koban's stock: deals of a ``GetUpdated`` page read as lots (or skipped with a reason),
and the programmes of ``ncDealProcess/GetAll``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.koban.wire.answers import STANDARD_STATUSES, WireAnswer, status_code
from service.koban.wire.dates import from_unix
from service.koban.wire.values import as_bool, fold_keys


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
        folded = fold_keys(data)
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
            out["status"] = status_code(out["status"])
            out.setdefault("custom", out["status"] not in STANDARD_STATUSES)
        if "result" in folded:
            out["won"] = str(folded["result"] or "").strip().upper() == "WON"
        process = folded.get("process")
        if isinstance(process, Mapping):
            proc = fold_keys(process)
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
    folded = fold_keys(item)
    ref = folded.get("guid") or folded.get("label")
    return None if ref in (None, "") else str(ref)[:100]


def read_deal(item: Any) -> KobanLot | SkippedDeal:
    """One deal of a page → a lot, or the reason it is skipped (one odd deal never fails
    the page: Koban's deal structure allows a null ``Extcode`` and any process's steps)."""
    if isinstance(item, Mapping):
        folded = fold_keys(item)
        if folded.get("extcode") in (None, ""):
            return SkippedDeal("no_extcode", _deal_ref(item))
        status = folded.get("status")
        if isinstance(status, Mapping):
            inner = fold_keys(status)
            status = inner.get("code") or inner.get("label")
        if status in (None, "") or (isinstance(status, str) and not status.strip()):
            return SkippedDeal("no_status", _deal_ref(item))
    try:
        return KobanLot.model_validate(item)
    except (ValidationError, ValueError, TypeError):
        return SkippedDeal("unreadable", _deal_ref(item))


class DealPage(WireAnswer):
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
        folded = fold_keys(data)
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


class Program(WireAnswer):
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
        return True if value is None else as_bool(value)


def parse_programs(payload: Any) -> list[Program]:
    """GetAll answers a bare list; a ``{"List": [...]}`` wrapper is accepted too."""
    if isinstance(payload, Mapping):
        payload = fold_keys(payload).get("list")
    if not isinstance(payload, list):
        raise ValueError("DealProcess GetAll: expected a list")
    programs = []
    for item in payload:
        try:
            programs.append(Program.model_validate(item))
        except ValidationError:
            continue  # a process without a code names no deal's `Process`: nothing to match
    return programs
