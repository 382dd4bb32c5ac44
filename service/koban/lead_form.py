"""Koban's lead webhook form ("Transmission d'une demande d'un lead"), read from its pairs.

``Tags`` and ``MoreFields`` arrive either as JSON text (``Tags=[{"TagCategoryCode": …,
"Label": …}]``) or as repeated indexed fields (``Tags[0].TagCategoryCode=…`` or
``Tags[0][TagCategoryCode]=…``): both give the same `LeadForm`. The person is the lead
(``Lead_Guid``) or the account (``Third_Guid``); one of them is required. Names, e-mails
and phones are personal data: `LeadForm.summary` is what may leave (events, logs).
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.koban.webhook_forms import MAX_IDENTIFIER

__all__ = ["LeadForm", "LeadFormError", "parse_lead_form"]

_INDEXED = re.compile(r"^(Tags|MoreFields)\[(\d{1,3})\](?:\.(\w+)|\[(\w+)\])$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCALARS = {
    "contact_type": "Contact_Type",
    "lead_guid": "Lead_Guid",
    "third_guid": "Third_Guid",
    "name": "Name",
    "first_name": "FirstName",
    "email": "EMail",
    "phone": "Phone",
    "mobile": "Mobile",
    "optin": "Optin",
    "comments": "Comments",
}
_SHAPES = {"tags": ("TagCategoryCode", "Label"), "morefields": ("FieldId", "Value")}
MAX_ITEMS = 100
MAX_TEXT = 4000


class LeadFormError(ValueError):
    """The form is not a lead webhook Koban could have sent."""


@dataclass(frozen=True, slots=True)
class LeadForm:
    contact_type: str | None
    lead_guid: str | None
    third_guid: str | None
    name: str | None
    first_name: str | None
    email: str | None
    phone: str | None
    mobile: str | None
    optin: str | None
    comments: str | None
    tags: tuple[tuple[str, str], ...]  # (TagCategoryCode, Label)
    more_fields: tuple[tuple[str, str], ...]  # (FieldId, Value)
    digest: str  # SHA-256 of the form's content, whatever its encoding

    @property
    def guid(self) -> str:
        """Who the lead is in Koban: the lead's guid, else the account's."""
        return self.lead_guid or self.third_guid or ""

    def summary(self) -> dict[str, Any]:
        """What may leave the store: guids, codes and the tags Koban segments on; never a
        name, an e-mail, a phone, a comment or a free-text extra field's value."""
        return {
            "leadGuid": self.lead_guid,
            "thirdGuid": self.third_guid,
            "contactType": self.contact_type,
            "programmes": [label for code, label in self.tags if code.upper() == "PROGRAMME"],
            "tags": [{"tagCategoryCode": c, "label": v} for c, v in self.tags],
            "moreFieldIds": [field for field, _ in self.more_fields],
            "optin": self.optin,
        }

    def contact(self) -> dict[str, Any]:
        """Everything the form says, for ``GET …/leads/{id}`` (kept `lead_retention`)."""
        return {
            **self.summary(),
            "name": self.name,
            "firstName": self.first_name,
            "email": self.email,
            "phone": self.phone,
            "mobile": self.mobile,
            "comments": self.comments,
            "moreFields": [{"fieldId": f, "value": v} for f, v in self.more_fields],
        }


def _clean(name: str, value: str, limit: int = MAX_TEXT) -> str | None:
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise LeadFormError(f"{name}: longer than {limit} characters")
    return value


def _guid(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_IDENTIFIER or _CONTROL.search(value) or "/" in value or "|" in value:
        raise LeadFormError(f"{name}: not a Koban guid")
    return value


def _from_json(name: str, text: str, keys: tuple[str, str]) -> list[tuple[str, str]]:
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise LeadFormError(f"{name}: neither a JSON array nor indexed fields") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise LeadFormError(f"{name}: expected a JSON array")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise LeadFormError(f"{name}: each item is an object")
        folded = {str(k).lower(): v for k, v in item.items()}
        first, second = (folded.get(k.lower()) for k in keys)
        out.append((_text_of(name, first), _text_of(name, second)))
    return out


def _text_of(name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | int | float | str):
        return str(value).strip()[:MAX_TEXT]
    raise LeadFormError(f"{name}: item values are text")


def parse_lead_form(pairs: Sequence[tuple[str, str]]) -> LeadForm:
    """The form's (name, value) pairs as sent → `LeadForm`; `LeadFormError` otherwise."""
    scalars: dict[str, str] = {}
    indexed: dict[str, dict[int, dict[str, str]]] = {"tags": {}, "morefields": {}}
    lists: dict[str, list[tuple[str, str]]] = {}
    wanted = {alias.lower(): field for field, alias in _SCALARS.items()}
    for raw_name, value in pairs:
        name = raw_name.strip()
        lowered = name.lower()
        match = _INDEXED.match(name)
        if match:
            group, index = match.group(1).lower(), int(match.group(2))
            key = (match.group(3) or match.group(4)).lower()
            indexed[group].setdefault(index, {})[key] = value.strip()[:MAX_TEXT]
        elif lowered in _SHAPES:
            if value.strip():
                lists[lowered] = _from_json(name, value, _SHAPES[lowered])
        elif lowered in wanted:
            field = wanted[lowered]
            if field in scalars and scalars[field] != value:
                raise LeadFormError(f"{name}: given twice with different values")
            scalars[field] = value
    items: dict[str, list[tuple[str, str]]] = {}
    for group, keys in _SHAPES.items():
        found = list(lists.get(group, []))
        for index in sorted(indexed[group]):
            entry = indexed[group][index]
            found.append((entry.get(keys[0].lower(), ""), entry.get(keys[1].lower(), "")))
        if len(found) > MAX_ITEMS:
            raise LeadFormError(f"{group}: more than {MAX_ITEMS} items")
        items[group] = found
    values = {f: _clean(_SCALARS[f], scalars.get(f, "")) for f in _SCALARS}
    lead_guid = _guid("Lead_Guid", values["lead_guid"])
    third_guid = _guid("Third_Guid", values["third_guid"])
    if lead_guid is None and third_guid is None:
        raise LeadFormError("Lead_Guid or Third_Guid is required")
    content = {**values, "tags": items["tags"], "moreFields": items["morefields"]}
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return LeadForm(
        contact_type=values["contact_type"],
        lead_guid=lead_guid,
        third_guid=third_guid,
        name=values["name"],
        first_name=values["first_name"],
        email=values["email"],
        phone=values["phone"],
        mobile=values["mobile"],
        optin=values["optin"],
        comments=values["comments"],
        tags=tuple(items["tags"]),
        more_fields=tuple(items["morefields"]),
        digest=digest,
    )
