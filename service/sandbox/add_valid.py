"""``ncPreresv/AddValid`` in the sandbox: the lot pre-reserved for ``ThirdId`` as
``ncPreresv/Add`` does (same refusals: 01 unknown lot, 02 unknown prospect), the dossier's
other fields kept as sent (`SandboxState.dossiers`, for tests to read)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .httpio import as_cents, json_object, koban_answer, lookup, nested, required

__all__ = ["ADD_VALID_ROUTES"]


async def preresv_add_valid(request: web.Request, state: Any) -> web.Response:
    body = await json_object(request)
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    third = lookup(body, "ThirdId")
    third = required(third if isinstance(third, str) and third else None, "ThirdId")
    state.prereserve(
        extcode,
        third,
        price_cents=as_cents(lookup(body, "PrixVente"), "PrixVente"),
        deposit_cents=as_cents(lookup(body, "Garantie"), "Garantie"),
        partner=None,
    )
    state.dossiers[extcode] = body
    return koban_answer(state, success=True)


ADD_VALID_ROUTES = (("POST", "ncPreresv/AddValid", preresv_add_valid),)
