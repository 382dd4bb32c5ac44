"""``POST …/prospects`` and ``POST …/cgps`` (admin): a third made in Koban with PostOne.

Koban's answer does not tell a created third from an updated one (PostOne upserts by
``Extcode``); the route answers 201 either way with the guid and the extcode used. Without
an extcode from the caller, one of ours is derived from the Idempotency-Key, so a retry
after a lost answer names the same third.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.contact_models import CamelOut, Code, ContactIn, contact_of
from service.entrypoints.api.context import authenticate, koban_for
from service.entrypoints.api.errors import json_response
from service.entrypoints.api.idempotency import HEADER, idempotent, scope_digest
from service.entrypoints.api.models import canonical_body
from service.entrypoints.api.openapi import WRITE, WRITE_ERRORS, Operation, Reply, documented
from service.entrypoints.api.routes_lots import BASE
from service.koban.wire import ThirdKind
from service.usecases.prospects import make_third, service_extcode

__all__ = ["request_scope", "routes"]

routes = web.RouteTableDef()


class ProspectIn(ContactIn):
    extcode: Code | None = None
    programme: Code | None = None
    origin: Code | None = None


class CgpIn(ContactIn):
    extcode: Code | None = None


class ProspectMadeOut(CamelOut):
    third_guid: str
    extcode: str


class CgpMadeOut(CamelOut):
    cgp_guid: str
    extcode: str


def request_scope(request: web.Request, caller: Caller) -> str | None:
    """The Idempotency-Key's scope digest (None without a key); `idempotent` has checked
    the key before the action runs."""
    key = request.headers.get(HEADER)
    return None if key is None else scope_digest(caller, request, key)


POST_PROSPECT = Operation(
    "Create (or update, by extcode) a prospect in Koban",
    "prospects",
    {201: Reply(ProspectMadeOut, "The prospect's Koban guid and the extcode it goes by.")},
    WRITE_ERRORS,
    scope=WRITE,
    body=ProspectIn,
    idempotent=True,
)


async def _post_third(
    request: web.Request,
    caller: Caller,
    body: ProspectIn | CgpIn,
    raw: Any,
    kind: ThirdKind,
    guid_key: str,
) -> web.Response:
    """PostOne for a prospect or a CGP under the request's Idempotency-Key: `guid_key`
    names the guid in the answer."""
    programme = body.programme if isinstance(body, ProspectIn) else None
    origin = body.origin if isinstance(body, ProspectIn) else None

    async def action() -> web.Response:
        scope = request_scope(request, caller)
        made = await make_third(
            caller.tenant,
            koban_for(request, caller),
            contact_of(body),
            kind=kind,
            extcode=body.extcode or service_extcode(scope),
            programme=programme,
            origin=origin,
            partner=caller.partner,
        )
        return json_response({guid_key: made.guid, "extcode": made.extcode}, 201)

    return await idempotent(request, caller, canonical_body(raw), action)


@routes.post(BASE + "/prospects")
@documented(POST_PROSPECT)
async def post_prospect(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, raw = await POST_PROSPECT.parse_body(request)
    return await _post_third(request, caller, body, raw, "PROSPECT", "thirdGuid")


POST_CGP = Operation(
    "Create (or update, by extcode) a CGP in Koban",
    "prospects",
    {201: Reply(CgpMadeOut, "The CGP's Koban guid (the `By` of its dénonciations).")},
    WRITE_ERRORS,
    scope="admin",
    body=CgpIn,
    idempotent=True,
)


@routes.post(BASE + "/cgps")
@documented(POST_CGP)
async def post_cgp(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    body, raw = await POST_CGP.parse_body(request)
    return await _post_third(request, caller, body, raw, "CGP", "cgpGuid")
