"""Koban's dénonciation methods in the sandbox (``ncDenonc/CheckDenonc``, ``ncDenonc/Create``)
and their controls (module off per programme, a prospect already denounced).

The prospect is found as Koban would from the contact it is given: by e-mail when one is
given, else by last name, first name and phone. Create refuses (``success: false``, no
code: Koban's doc lists none) when the check would say no or the prospect is unknown.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .denonciation_book import Denonciations
from .httpio import BadRequest, json_answer, json_object, koban_answer, lookup, nested
from .refusals import SandboxRefusal
from .stock import Third

__all__ = ["DENONCIATION_CONTROLS", "DENONCIATION_ROUTES", "find_prospect"]


def _text(body: dict[str, Any], *names: str) -> str:
    for name in names:
        value = lookup(body, name)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise BadRequest(f"{name} must be a string")
            return value.strip()
    return ""


def _programme(body: dict[str, Any]) -> str:
    code = nested(body, "Process", "Code") or _text(body, "ProcessCode", "Programme")
    if not code:
        raise BadRequest("Process.Code is required")
    return code


def find_prospect(prospects: dict[str, Third], body: dict[str, Any]) -> Third | None:
    email = _text(body, "EMail", "Email").lower()
    name = _text(body, "Name").lower()
    first = _text(body, "FirstName").lower()
    phone = _text(body, "Phone")
    for third in prospects.values():
        if third.type != "PROSPECT":
            continue
        if email:
            if third.email.lower() == email:
                return third
        elif (
            name
            and third.name.lower() == name
            and third.first_name.lower() == first
            and (not phone or phone in (third.phone, third.mobile))
        ):
            return third
    return None


def _check(state: Any, body: dict[str, Any]) -> tuple[str, Third | None, dict[str, bool]]:
    book: Denonciations = state.denonciations
    programme = _programme(body)
    third = find_prospect(state.prospects, body)
    denounced = third is not None and (programme, third.guid) in book.made
    answer = {
        "Activated": programme not in book.disabled,
        "IsDenonced": denounced,
        "Exists": third is not None,
    }
    return programme, third, answer


async def check_denonc(request: web.Request, state: Any) -> web.Response:
    """The three flags in the profile's envelope: beside ``success`` (the immobilier
    doc's envelope has no ``Result``), or in ``Result`` (the generic envelope's place for
    what a method returns)."""
    _, _, answer = _check(state, await json_object(request))
    if state.profile == "generic":
        return koban_answer(state, success=True, Result=answer)
    flags: dict[str, Any] = dict(answer)
    return koban_answer(state, success=True, **flags)


async def create_denonc(request: web.Request, state: Any) -> web.Response:
    body = await json_object(request)
    programme, third, answer = _check(state, body)
    if not answer["Activated"]:
        raise SandboxRefusal("dénonciation module not activated", reason="MODULE_DISABLED")
    if third is None:
        raise SandboxRefusal("prospect not found", reason="PROSPECT_UNKNOWN")
    if answer["IsDenonced"]:
        raise SandboxRefusal("prospect already denounced", reason="ALREADY_DENOUNCED")
    by = _text(body, "By") or None
    state.denonciations.made[(programme, third.guid)] = by
    return koban_answer(state, success=True)


# ---------------------------------------------------------------- controls


async def module_post(request: web.Request, state: Any) -> web.Response:
    """``{"activated": bool}`` for the programme in the path."""
    body = await json_object(request)
    activated = body.get("activated")
    if not isinstance(activated, bool):
        raise BadRequest("activated must be a boolean")
    code = request.match_info["code"]
    book: Denonciations = state.denonciations
    (book.disabled.discard if activated else book.disabled.add)(code)
    return json_answer({"programme": code, "activated": activated})


async def denounced_post(request: web.Request, state: Any) -> web.Response:
    """Mark a prospect already denounced: ``{"thirdGuid", "programme", "by"?}``."""
    body = await json_object(request)
    guid, programme = body.get("thirdGuid"), body.get("programme")
    if not isinstance(guid, str) or not isinstance(programme, str):
        raise BadRequest("thirdGuid and programme are required strings")
    if guid not in state.prospects:
        raise SandboxRefusal("prospect not found", http_status=404)
    by = body.get("by")
    state.denonciations.made[(programme, guid)] = by if isinstance(by, str) else None
    return json_answer({"thirdGuid": guid, "programme": programme})


async def denonciations_get(request: web.Request, state: Any) -> web.Response:
    book: Denonciations = state.denonciations
    items = [{"programme": p, "thirdGuid": g, "by": b} for (p, g), b in book.made.items()]
    return json_answer({"items": items, "disabled": sorted(book.disabled)})


DENONCIATION_ROUTES = (
    ("POST", "ncDenonc/CheckDenonc", check_denonc),
    ("POST", "ncDenonc/Create", create_denonc),
)
DENONCIATION_CONTROLS = (
    ("POST", "/_sandbox/programmes/{code}/denonciation", module_post),
    ("POST", "/_sandbox/denonciations", denounced_post),
    ("GET", "/_sandbox/denonciations", denonciations_get),
)
