"""`koban-options koban check`: the read-only contract probe against a tenant's Koban.

Three reads (``ncDealProcess/GetAll``, ``ncDeal/GetUpdated`` with ``l=1``, GetLotStatus on
that lot) and ``ncDenonc/CheckDenonc`` (a POST that changes nothing) on the first
programme, for a contact that cannot exist; for each field the service relies on, whether
it was found, missing or in another shape; plus the casing of the answers' keys and the
date forms seen. Every guess it checks is listed in docs/koban-wire.md. Nothing is
written to Koban.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from service.koban import KobanClient, KobanError, wire
from service.koban.denonciation import Contact

__all__ = ["CheckReport", "Finding", "check_koban", "date_form"]

State = Literal["found", "missing", "shape", "info"]
_ISO_ZONE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
# CheckDenonc's probe: a reserved domain (RFC 2606) and a name no real prospect bears, so
# Koban's answer is about no one.
PROBE_CONTACT = Contact(last_name="KOBAN-CHECK", email="koban-check@invalid.example")
# How `denonciation.parse_check` reads a flag; other values are another shape.
_FLAG_TEXTS = frozenset({"true", "false", "1", "0", "o", "n", "oui", "non", "yes", "no"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One documented field of one answer: ``found``, ``missing``, in another ``shape``
    (the last two fail the check), or ``info`` (seen, not relied on)."""

    method: str
    name: str
    state: State
    detail: str = ""

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.state:<7} {self.method} {self.name}{tail}"


@dataclass(slots=True)
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    casings: set[str] = field(default_factory=set)
    date_forms: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not any(f.state in ("missing", "shape") for f in self.findings)

    def lines(self) -> list[str]:
        out = [f.line() for f in self.findings]
        out.append("casing  " + (", ".join(sorted(self.casings)) or "none seen"))
        out.append("dates   " + (", ".join(sorted(self.date_forms)) or "none seen"))
        out.append("verdict " + ("every guess held" if self.ok else "some guesses failed"))
        return out

    def add(self, method: str, name: str, state: State, detail: str = "") -> None:
        self.findings.append(Finding(method, name, state, detail))


def _casing(key: str) -> str:
    if key.islower():
        return "lowercase keys"
    if key[:1].isupper():
        return "PascalCase keys"
    return "camelCase keys"


def date_form(value: Any) -> str | None:
    """How a date is written (None: not a date the service reads)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "UNIX milliseconds" if value > wire.MS_THRESHOLD else "UNIX seconds"
    if not isinstance(value, str):
        return None
    try:
        wire.koban_instant(value)
    except ValueError:
        return None
    text = value.strip()
    if text.startswith("/Date("):
        return "/Date(ms)/"
    if text.replace(".", "", 1).isdigit():
        return "digits"
    return "ISO-8601 with zone" if _ISO_ZONE.search(text) else "naive ISO-8601 (read as UTC)"


def _get(obj: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """(present, value) of `name`, matched case-insensitively as the client does."""
    for key, value in obj.items():
        if str(key).lower() == name.lower():
            return True, value
    return False, None


class _Probe:
    def __init__(self, report: CheckReport) -> None:
        self.report = report

    def keys(self, obj: Mapping[str, Any]) -> None:
        self.report.casings.update(_casing(str(k)) for k in obj)

    def text(self, method: str, obj: Mapping[str, Any], name: str, *, required: bool) -> str | None:
        present, value = _get(obj, name)
        if not present or value in (None, ""):
            self.report.add(method, name, "missing" if required else "info", "absent or null")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.report.add(method, name, "shape", f"a {type(value).__name__}, not text")
            return None
        form = "text" if isinstance(value, str) else "a number (read as text)"
        self.report.add(method, name, "found", form)
        return str(value)

    def date(self, method: str, obj: Mapping[str, Any], name: str, *, required: bool) -> None:
        present, value = _get(obj, name)
        if not present or value in (None, ""):
            self.report.add(method, name, "missing" if required else "info", "absent or null")
            return
        form = date_form(value)
        if form is None:
            self.report.add(method, name, "shape", f"not a date the service reads: {value!r}")
            return
        self.report.date_forms.add(form)
        self.report.add(method, name, "found", form)

    def code(self, method: str, obj: Mapping[str, Any], name: str, *, required: bool) -> str | None:
        """A `{Code}` reference (a bare code tolerated, as the immobilier doc writes it)."""
        present, value = _get(obj, name)
        if not present or value in (None, ""):
            self.report.add(method, name, "missing" if required else "info", "absent or null")
            return None
        if isinstance(value, Mapping):
            self.keys(value)
            has, code = _get(value, "Code")
            if not has or code in (None, ""):
                has, code = _get(value, "Extcode")
            if has and isinstance(code, str | int) and not isinstance(code, bool):
                shape = "{" + ", ".join(str(k) for k in value) + "}"
                self.report.add(method, name, "found", f"an object {shape}")
                return str(code)
            self.report.add(method, name, "shape", "an object without a Code")
            return None
        if isinstance(value, str | int) and not isinstance(value, bool):
            self.report.add(method, name, "found", "a bare code")
            return str(value)
        self.report.add(method, name, "shape", f"a {type(value).__name__}")
        return None

    def flag(self, method: str, obj: Mapping[str, Any], name: str) -> None:
        """A yes/no the service relies on: absent or null reads as false, so it is missing."""
        present, value = _get(obj, name)
        if not present or value is None:
            self.report.add(method, name, "missing", "absent or null")
        elif isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            self.report.add(method, name, "found", repr(value))
        elif isinstance(value, str) and value.strip().lower() in _FLAG_TEXTS:
            self.report.add(method, name, "found", f"{value!r} (text)")
        else:
            self.report.add(method, name, "shape", f"not a yes/no: {value!r}")


async def check_koban(koban: KobanClient) -> CheckReport:
    """Probe `koban` read-only; KobanError/KobanUnavailable propagate (nothing to judge),
    except CheckDenonc's error, reported as its answer missing."""
    report = CheckReport()
    probe = _Probe(report)
    programme = await _check_programmes(koban, probe)
    extcode = await _check_deals(koban, probe)
    if extcode is not None:
        await _check_lot_status(koban, probe, extcode)
    if programme is None:
        report.add("CheckDenonc", "answer", "info", "no programme code from GetAll: not asked")
    else:
        await _check_denonc(koban, probe, programme)
    return report


async def _check_programmes(koban: KobanClient, probe: _Probe) -> str | None:
    method = "GetAll"
    payload = await koban.read_raw(wire.DEAL_PROCESS_GET_ALL)
    if isinstance(payload, Mapping):
        probe.keys(payload)
        payload = _get(payload, "List")[1]
    if not isinstance(payload, list):
        probe.report.add(method, "answer", "shape", "not a list of processes")
        return None
    probe.report.add(method, "answer", "found", f"a list of {len(payload)} processes")
    if not payload or not isinstance(payload[0], Mapping):
        return None
    first = payload[0]
    probe.keys(first)
    code = probe.text(method, first, "Extcode", required=True)
    if code is None and _get(first, "Code")[0]:
        probe.report.add(method, "Code", "info", "present: the published structure has Extcode")
    probe.text(method, first, "Guid", required=False)
    probe.text(method, first, "Label", required=False)
    return code


async def _check_deals(koban: KobanClient, probe: _Probe) -> str | None:
    method = "GetUpdated"
    params = wire.updated_params(0, 0, 1)
    payload = await koban.read_raw(wire.DEAL_GET_UPDATED, params)
    if not isinstance(payload, Mapping):
        probe.report.add(method, "answer", "shape", "not an object {Length, List}")
        return None
    probe.keys(payload)
    present, length = _get(payload, "Length")
    if not present or isinstance(length, bool) or not isinstance(length, int):
        probe.report.add(method, "Length", "missing" if not present else "shape", repr(length))
    else:
        probe.report.add(method, "Length", "found", str(length))
    present, items = _get(payload, "List")
    if not present or not isinstance(items, list):
        probe.report.add(method, "List", "missing" if not present else "shape", "not an array")
        return None
    probe.report.add(method, "List", "found", f"{len(items)} deal(s) on the page")
    if not items or not isinstance(items[0], Mapping):
        probe.report.add(method, "deal", "info", "no deal to read: its fields are not checked")
        return None
    deal = items[0]
    probe.keys(deal)
    extcode = probe.text(method, deal, "Extcode", required=True)
    probe.code(method, deal, "Status", required=True)
    probe.code(method, deal, "Process", required=True)
    probe.text(method, deal, "Guid", required=False)
    probe.text(method, deal, "Label", required=False)
    probe.date(method, deal, "Updated", required=False)
    probe.date(method, deal, "DUpdated", required=False)
    for name in ("Result", "Amountprev", "Type", "Link"):
        present, value = _get(deal, name)
        probe.report.add(method, name, "info", repr(value) if present else "absent")
    return extcode


async def _check_lot_status(koban: KobanClient, probe: _Probe, extcode: str) -> None:
    method = "GetLotStatus"
    payload = await koban.read_raw(wire.GET_LOT_STATUS, wire.lot_status_params(extcode))
    if not isinstance(payload, Mapping):
        probe.report.add(method, "answer", "shape", "not an object")
        return
    probe.keys(payload)
    present, result = _get(payload, "Result")
    if not present:
        probe.report.add(method, "Result", "missing", "absent")
    elif isinstance(result, bool) or not isinstance(result, int) or result not in (-3, -2, 1, 0):
        probe.report.add(method, "Result", "shape", f"{result!r} (expected 0, 1, -2 or -3)")
    else:
        probe.report.add(method, "Result", "found", str(result))
    present, rank = _get(payload, "MaxRank")
    if present and rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        probe.report.add(method, "MaxRank", "shape", repr(rank))
    else:
        probe.report.add(method, "MaxRank", "found" if present else "info", repr(rank))
    probe.date(method, payload, "EndDate", required=False)


async def _check_denonc(koban: KobanClient, probe: _Probe, programme: str) -> None:
    """CheckDenonc's flags, read where `denonciation.parse_check` reads them: inside
    ``Result`` when it is an object, else beside the envelope's keys."""
    method = "CheckDenonc"
    try:
        payload = await koban.check_denonciation_raw(programme, PROBE_CONTACT)
    except KobanError as exc:
        # An error here (no such method, no dénonciation module) fails this guess alone.
        why = f"Koban answered HTTP {exc.status}" if exc.status else "an unreadable answer"
        probe.report.add(method, "answer", "missing", why)
        return
    if not isinstance(payload, Mapping):
        probe.report.add(method, "answer", "shape", "not an object")
        return
    probe.keys(payload)
    inner = _get(payload, "Result")[1]
    flags: Mapping[str, Any] = inner if isinstance(inner, Mapping) else payload
    if flags is inner:
        probe.keys(flags)
    where = "in Result" if flags is inner else "at the top level"
    probe.report.add(method, "answer", "found", f"flags {where}, programme {programme}")
    for name in ("Activated", "IsDenonced", "Exists"):
        probe.flag(method, flags, name)
