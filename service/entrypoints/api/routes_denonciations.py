"""``POST …/denonciations/check`` and ``POST …/denonciations`` (`service.usecases.denonciation`).

A partner token denounces ``By`` its configured CGP (``cgp_guid``); naming another CGP is
``403 FORBIDDEN``. Koban's refusal is ``409 DENONCIATION_IMPOSSIBLE`` with the reason in
``errors[0]`` (field ``reason``) and in the message.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.contact_models import (
    CamelOut,
    Code,
    ContactIn,
    Email,
    Name,
    Phone,
    contact_of,
)
from service.entrypoints.api.context import authenticate, koban_for
from service.entrypoints.api.errors import FORBIDDEN, ApiError, json_response
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import Guid, canonical_body
from service.entrypoints.api.openapi import (
    WRITE,
    WRITE_ERRORS,
    Operation,
    Reply,
    documented,
    merge,
)
from service.entrypoints.api.routes_lots import BASE
from service.entrypoints.api.routes_prospects import request_scope
from service.koban.denonciation import Contact
from service.usecases.denonciation import (
    DenonciationImpossible,
    DenonciationRequest,
    denounce,
    refusal_reason,
)

__all__ = ["DENONCIATION_IMPOSSIBLE", "routes"]

DENONCIATION_IMPOSSIBLE = "DENONCIATION_IMPOSSIBLE"

routes = web.RouteTableDef()


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    programme: Code
    last_name: Name = Field(alias="lastName")
    first_name: Name | None = Field(default=None, alias="firstName")
    email: Email | None = None
    phone: Phone | None = None


class ProspectContactIn(ContactIn):
    extcode: Code | None = None


class DenonciationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    programme: Code
    prospect: ProspectContactIn
    cgp_guid: Guid | None = Field(default=None, alias="cgpGuid")


class CheckOut(CamelOut):
    possible: bool
    reason: Literal["MODULE_DISABLED", "ALREADY_DENOUNCED"] | None
    prospect_exists: bool


class DenonciationOut(CamelOut):
    third_guid: str | None
    programme: str
    created_prospect: bool
    by: str | None


CHECK = Operation(
    "Ask Koban whether the prospect may be denounced on the programme",
    "denonciations",
    {200: Reply(CheckOut, "Koban's CheckDenonc answer (no guid: Koban returns none).")},
    WRITE_ERRORS,
    scope=WRITE,
    body=CheckIn,
)

DENOUNCE = Operation(
    "Denounce a prospect on a programme (making the prospect in Koban when needed)",
    "denonciations",
    {201: Reply(DenonciationOut, "The dénonciation made (or finished, on a retry).")},
    merge(WRITE_ERRORS, {409: [DENONCIATION_IMPOSSIBLE]}),
    scope=WRITE,
    body=DenonciationIn,
    idempotent=True,
)


@routes.post(BASE + "/denonciations/check")
@documented(CHECK)
async def check(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, _ = await CHECK.parse_body(request)
    contact = Contact(
        last_name=body.last_name, first_name=body.first_name, email=body.email, phone=body.phone
    )
    answer = await koban_for(request, caller).check_denonciation(body.programme, contact)
    reason = refusal_reason(answer)
    out = CheckOut(possible=reason is None, reason=reason, prospect_exists=answer.exists)  # type: ignore[arg-type]
    return json_response(out.model_dump(by_alias=True))


def _by(caller: Caller, named: str | None) -> str | None:
    """The CGP the dénonciation is made `By`: a partner token's own, else the body's."""
    if caller.partner is None:
        return named
    if named is not None and named != caller.cgp:
        raise ApiError(403, FORBIDDEN, "A partner token denounces only by its own CGP.")
    return caller.cgp


@routes.post(BASE + "/denonciations")
@documented(DENOUNCE)
async def create(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, raw = await DENOUNCE.parse_body(request)
    by = _by(caller, body.cgp_guid)
    req = DenonciationRequest(
        programme=body.programme,
        contact=contact_of(body.prospect),
        extcode=body.prospect.extcode,
        by=by,
        partner=caller.partner,
    )

    async def action() -> web.Response:
        koban = koban_for(request, caller)
        try:
            made = await denounce(caller.tenant, koban, req, request_scope(request, caller))
        except DenonciationImpossible as exc:
            raise ApiError(
                409,
                DENONCIATION_IMPOSSIBLE,
                exc.message,
                source="koban",
                errors=[{"field": "reason", "message": exc.reason}],
            ) from exc
        out = DenonciationOut(
            third_guid=made.third_guid,
            programme=made.programme,
            created_prospect=made.created_prospect,
            by=made.by,
        )
        return json_response(out.model_dump(by_alias=True), 201)

    return await idempotent(request, caller, canonical_body(raw), action)
