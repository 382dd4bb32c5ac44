"""Koban's dénonciation methods on the wire: ``ncDenonc/CheckDenonc`` and ``ncDenonc/Create``.

Koban's doc names the contact fields (e-mail, last and first name, phone) and the
programme's code, and ``By`` (the CGP's guid) on Create, but not their JSON spelling: we
send the account structure's names (``Name``, ``FirstName``, ``EMail``, ``Phone``,
``Cell`` for the mobile) and ``Process.Code``, a guess listed in docs/koban-wire.md. The
check's answer (``Activated``, ``IsDenonced``, ``Exists``) is read case-insensitively,
bare or inside ``Result``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.koban.wire import Endpoint

__all__ = [
    "CHECK_DENONC",
    "CREATE_DENONC",
    "Contact",
    "DenonciationCheck",
    "denonciation_body",
    "parse_check",
]

# Both carry a body; CheckDenonc changes nothing but is sent as Koban's other POSTs are.
CHECK_DENONC = Endpoint("CheckDenonc", "POST", "/ncDenonc/CheckDenonc")
CREATE_DENONC = Endpoint("DenoncCreate", "POST", "/ncDenonc/Create")


@dataclass(frozen=True, slots=True)
class Contact:
    """A prospect's contact details: personal data, sent to Koban and never logged."""

    last_name: str
    first_name: str | None = None
    email: str | None = None
    phone: str | None = None
    mobile: str | None = None


@dataclass(frozen=True, slots=True)
class DenonciationCheck:
    """CheckDenonc's answer: ``activated`` false means the module is off for the programme."""

    activated: bool
    is_denounced: bool
    exists: bool


def denonciation_body(programme: str, contact: Contact, by: str | None = None) -> dict[str, Any]:
    """The body of CheckDenonc (`by` None) and of Create."""
    body: dict[str, Any] = {"Name": contact.last_name, "Process": {"Code": programme}}
    for wire_name, value in (
        ("FirstName", contact.first_name),
        ("EMail", contact.email),
        ("Phone", contact.phone),
        ("Cell", contact.mobile),
    ):
        if value is not None:
            body[wire_name] = value
    if by is not None:
        body["By"] = by
    return body


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "o", "oui", "yes")
    return bool(value)


def parse_check(payload: Any) -> DenonciationCheck:
    """CheckDenonc's JSON → `DenonciationCheck`; ValueError when it is not an object."""
    if not isinstance(payload, Mapping):
        raise ValueError("CheckDenonc: expected an object")
    folded = {str(k).lower(): v for k, v in payload.items()}
    inner = folded.get("result")
    if isinstance(inner, Mapping):
        folded = {str(k).lower(): v for k, v in inner.items()}
    if "activated" not in folded:
        raise ValueError("CheckDenonc: no Activated in the answer")
    return DenonciationCheck(
        activated=_flag(folded.get("activated")),
        is_denounced=_flag(folded.get("isdenonced")),
        exists=_flag(folded.get("exists")),
    )
