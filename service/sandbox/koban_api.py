"""Koban's API as the sandbox serves it under ``/api/v1/``: the key check, the injected
faults, then each method's handler over `SandboxState`. Before answering, the ticks the
sandbox clock has passed run (`SandboxState.catch_up`), as Koban expires on its own clock.
Routes, verbs and shapes: docs/koban-wire.md; the sandbox's choices: docs/sandbox.md."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .add_valid import ADD_VALID_ROUTES
from .denonciations import DENONCIATION_ROUTES
from .faults import Fault
from .httpio import (
    SHUTDOWN_KEY,
    STATE_KEY,
    BadRequest,
    as_cents,
    as_instant,
    as_int,
    json_answer,
    json_object,
    koban_answer,
    lookup,
    nested,
    plain_error,
    query_int,
    refusal_answer,
    required,
    wire_ts,
)
from .refusals import SandboxRefusal
from .state import DEFAULT_PAGE, MAX_PAGE, SandboxState

__all__ = ["KOBAN_ROUTES", "add_koban_routes"]

KobanHandler = Callable[[web.Request, SandboxState], Awaitable[web.Response]]


def _authorised(request: web.Request, state: SandboxState) -> bool:
    api = request.headers.get("X-ncApi", "")
    user = request.headers.get("X-ncUser", "")
    ok_api = hmac.compare_digest(api.encode(), state.api_key.encode())
    ok_user = hmac.compare_digest(user.encode(), state.user_key.encode())
    return ok_api and ok_user


async def _hang(request: web.Request, fault: Fault) -> web.Response:
    shutdown = request.app[SHUTDOWN_KEY]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(shutdown.wait(), fault.hang_seconds)
    return plain_error(504, "injected timeout")


def _reset(request: web.Request) -> web.Response:
    """Drop the connection with a TCP RST (SO_LINGER 0); the answer is never written."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return plain_error(502, "injected reset")


async def _server_fault(request: web.Request, fault: Fault) -> web.Response | None:
    if fault.reset:
        return _reset(request)
    if fault.timeout:
        return await _hang(request, fault)
    if fault.status is not None:
        return plain_error(fault.status, "injected fault")
    return None


def _koban(method: str, handler: KobanHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def endpoint(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        if not _authorised(request, state):
            return plain_error(401, "missing or wrong X-ncApi / X-ncUser")
        state.calls[method] += 1
        fault = state.take_fault(method)
        if fault is not None:
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if not fault.apply:
                early = await _server_fault(request, fault)
                if early is not None:
                    return early
            if fault.errorcode is not None:
                return koban_answer(
                    state, success=False, errorcode=fault.errorcode, message="injected error"
                )
        state.catch_up()
        try:
            response = await handler(request, state)
        except SandboxRefusal as exc:
            response = refusal_answer(state, exc)
        except BadRequest as exc:
            response = plain_error(400, str(exc))
        if fault is not None and fault.apply:
            late = await _server_fault(request, fault)
            if late is not None:
                return late
        return response

    return endpoint


async def get_lot_status(request: web.Request, state: SandboxState) -> web.Response:
    extcode = lookup(request.query, "extcode")
    if not extcode:
        raise BadRequest("extcode is required")
    answer = state.lot_status(extcode)
    end = answer["EndDate"]
    answer["EndDate"] = wire_ts(state, end if isinstance(end, int) else None)
    return json_answer(answer)


async def option_add(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    third = required(nested(body, "Third", "Guid"), "Third.Guid")
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank_raw = lookup(body, "Rank")
    date_raw = lookup(body, "DateOption")
    if state.profile == "generic":
        # Koban's doc lists both as required; the doc profile stays lenient.
        if rank_raw in (None, ""):
            raise BadRequest("Rank is required")
        if date_raw in (None, ""):
            raise BadRequest("DateOption is required")
    rank = None if rank_raw is None else as_int(rank_raw, "Rank")
    placed_at = None if date_raw in (None, "") else as_instant(date_raw, "DateOption")
    partner = nested(body, "Part", "Guid")
    state.add_option(extcode, third, rank=rank, placed_at=placed_at, partner=partner)
    return koban_answer(state, success=True)


async def option_prolong(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank = as_int(lookup(body, "Rank"), "Rank")
    until_raw = lookup(body, "DateProlongation")
    if until_raw in (None, ""):
        raise BadRequest("DateProlongation is required")
    state.prolong_option(extcode, rank, as_instant(until_raw, "DateProlongation"))
    return koban_answer(state, success=True)


async def option_undo(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank = as_int(lookup(body, "Rank"), "Rank")
    state.undo_option(extcode, rank)
    return koban_answer(state, success=True)


async def preresv_add(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    third = required(nested(body, "Third", "Guid"), "Third.Guid")
    state.prereserve(
        extcode,
        third,
        price_cents=as_cents(lookup(body, "PrixVente"), "PrixVente"),
        deposit_cents=as_cents(lookup(body, "Garantie"), "Garantie"),
        partner=nested(body, "Part", "Guid"),
    )
    return koban_answer(state, success=True)


async def preresv_desist(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    extcode = required(nested(body, "Deal", "Extcode"), "Deal.Extcode")
    third = required(nested(body, "Third", "Guid"), "Third.Guid")
    state.desist(extcode, third)
    return koban_answer(state, success=True)


async def _updated(
    request: web.Request, state: SandboxState, process_code: str | None
) -> web.Response:
    raw = lookup(request.query, "updated")
    if raw in (None, "") and state.profile == "generic":
        raise BadRequest("updated is required")
    updated = 0 if raw in (None, "") else as_instant(raw, "updated")
    start = query_int(request, "s", 0)
    length = query_int(request, "l", DEFAULT_PAGE) or DEFAULT_PAGE
    total, page = state.updated_lots(updated, start, min(length, MAX_PAGE), process_code)
    if state.quirks:
        for lot in page:
            value = lot["Updated"]
            if isinstance(value, int):
                lot["Updated"] = wire_ts(state, value)
    return json_answer({"Length": total, "List": page})


async def deal_get_updated(request: web.Request, state: SandboxState) -> web.Response:
    return await _updated(request, state, None)


async def deal_get_updated_process(request: web.Request, state: SandboxState) -> web.Response:
    code = lookup(request.query, "processcode")
    if not code:
        raise BadRequest("processcode is required")
    return await _updated(request, state, code)


async def deal_process_get_all(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer(state.deal_processes())


def _code_of(body: dict[str, Any], name: str, *, lenient: bool) -> str | None:
    """An account's ``Status`` / ``Type`` / ``Origin``: ``{"Code": …}`` as Koban's account
    structure has it (the doc profile also takes a bare string)."""
    value = lookup(body, name)
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        code = lookup(value, "Code")
        if code is None or code == "":
            return None
        if isinstance(code, bool) or not isinstance(code, str | int):
            raise BadRequest(f"{name}.Code must be a string")
        return str(code)
    if lenient and isinstance(value, str):
        return value
    raise BadRequest(f"{name} must be an object {{Code}}")


async def third_post_one(request: web.Request, state: SandboxState) -> web.Response:
    """ncThird/PostOne with Koban's account structure; ``?uniqueproperty=Extcode`` makes a
    resend with the same Extcode update that third. Answers the new Guid in ``Result``."""
    body = await json_object(request)

    def text(name: str) -> str:
        value = lookup(body, name)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadRequest(f"{name} must be a string")
        return str(value)

    label = text("Label")
    if not label.strip():
        raise BadRequest("Label is required")
    lenient = state.profile == "doc"
    status = _code_of(body, "Status", lenient=lenient)
    kind = "CGP" if (status or "").upper() == state.cgp_status_code.upper() else "PROSPECT"
    unique = (lookup(request.query, "uniqueproperty") or "").lower() == "extcode"
    third = state.add_third(
        type=kind,
        name=label,
        first_name=text("FirstName"),
        email=text("EMail"),
        phone=text("Phone"),
        mobile=text("Cell"),
        extcode=text("Extcode"),
        type_code=_code_of(body, "Type", lenient=lenient),
        unique_extcode=unique,
        status_code=status,
    )
    return koban_answer(state, success=True, Result=third.guid)


async def third_get_one_by_key(request: web.Request, state: SandboxState) -> web.Response:
    """ncThird/GetOneByKey?uniqueproperty=Email|Extcode&key=…: the account, as Koban's
    account structure shows it, in ``Result``. Koban documents no such method: this is the
    service's guess (docs/koban-wire.md), served so the guess can be exercised. A third
    it does not know is a 404 carrying Koban's envelope, as for Add's unknown third."""
    prop = lookup(request.query, "uniqueproperty") or ""
    key = lookup(request.query, "key") or ""
    if not key.strip():
        raise BadRequest("key is required")
    try:
        third = state.third_by_key(prop, key)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if third is None:
        raise SandboxRefusal("third not found", http_status=404, reason="THIRD_UNKNOWN")
    return koban_answer(state, success=True, Result=third.as_json())


KOBAN_ROUTES: tuple[tuple[str, str, KobanHandler], ...] = (
    ("GET", "ncOption/GetLotStatus", get_lot_status),
    ("POST", "ncOption/Add", option_add),
    ("POST", "ncOption/Prolong", option_prolong),
    ("POST", "ncOption/Undo", option_undo),
    ("POST", "ncPreresv/Add", preresv_add),
    ("POST", "ncPreresv/Desist", preresv_desist),
    ("GET", "ncDeal/GetUpdated", deal_get_updated),
    ("GET", "ncDeal/GetUpdatedProcess", deal_get_updated_process),
    ("GET", "ncDealProcess/GetAll", deal_process_get_all),
    ("POST", "ncThird/PostOne", third_post_one),
    ("GET", "ncThird/GetOneByKey", third_get_one_by_key),
    *DENONCIATION_ROUTES,
    *ADD_VALID_ROUTES,
)


def add_koban_routes(app: web.Application) -> None:
    """Koban's methods under ``/api/v1/``."""
    for verb, method, handler in KOBAN_ROUTES:
        app.router.add_route(verb, f"/api/v1/{method}", _koban(method, handler))
