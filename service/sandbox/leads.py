"""The sandbox's control that makes Koban send its lead webhook (``POST /_sandbox/leads``).

The body names the lead (``leadGuid`` or ``thirdGuid``, one made up when neither is
given), its contact, ``tags`` / ``moreFields`` as lists of objects in Koban's shape, and
``encoding``: ``json`` sends ``Tags`` / ``MoreFields`` as JSON text, ``indexed`` as
``Tags[0].TagCategoryCode``-style fields. The answer is the delivery (after it is made).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from .httpio import BadRequest, json_answer, json_object
from .webhooks import FIELDS, Webhook

__all__ = ["LEAD_CONTROLS", "lead_fields"]

DRAIN_TIMEOUT = 30.0

_CONTACT = {
    "contactType": "Contact_Type",
    "name": "Name",
    "firstName": "FirstName",
    "email": "EMail",
    "phone": "Phone",
    "mobile": "Mobile",
    "optin": "Optin",
    "comments": "Comments",
}
_LISTS = {
    "tags": ("Tags", ("TagCategoryCode", "Label")),
    "moreFields": ("MoreFields", ("FieldId", "Value")),
}


def _items(body: dict[str, Any], name: str, keys: tuple[str, str]) -> list[dict[str, str]]:
    items = body.get(name) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequest(f"{name} must be a list of objects")
    return [{k: str(item.get(k, "")) for k in keys} for item in items]


def lead_fields(body: dict[str, Any], guid: str) -> dict[str, str]:
    """The form Koban would post for `body` (see the module's docstring)."""
    encoding = body.get("encoding", "json")
    if encoding not in ("json", "indexed"):
        raise BadRequest("encoding must be 'json' or 'indexed'")
    fields = dict.fromkeys(FIELDS["lead"], "")
    if body.get("thirdGuid"):
        fields["Third_Guid"] = str(body["thirdGuid"])
        fields["Contact_Type"] = "Third"
    else:
        fields["Lead_Guid"] = guid
        fields["Contact_Type"] = "Lead"
    for name, wire in _CONTACT.items():
        if body.get(name) is not None:
            fields[wire] = str(body[name])
    for name, (wire, keys) in _LISTS.items():
        items = _items(body, name, keys)
        if encoding == "json":
            fields[wire] = orjson.dumps(items).decode()
        else:
            del fields[wire]
            for i, item in enumerate(items):
                for key, value in item.items():
                    fields[f"{wire}[{i}].{key}"] = value
    return fields


async def leads_post(request: web.Request, state: Any) -> web.Response:
    body = await json_object(request)
    guid = str(body.get("leadGuid") or state.new_guid())
    hook = Webhook("lead", lead_fields(body, guid))
    delivery = state.webhooks.fire(hook)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.webhooks.drain(), DRAIN_TIMEOUT)
    return json_answer({"leadGuid": guid, "delivery": delivery.as_json()})


LEAD_CONTROLS = (("POST", "/_sandbox/leads", leads_post),)
