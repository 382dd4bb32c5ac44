"""The sandbox's test controls under ``/_sandbox/`` (no key: a local test tool): faults,
the calls received, the clock, Koban's UI actions on a lot, prospects, webhook targets and
settings. Control actions wait until their webhooks are delivered before answering."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from statecharts.ticks import add_duration, parse_duration

from .clock import ClockBackwards
from .denonciations import DENONCIATION_CONTROLS
from .faults import Fault
from .httpio import (
    STATE_KEY,
    BadRequest,
    as_instant,
    as_int,
    json_answer,
    json_object,
    plain_error,
)
from .leads import LEAD_CONTROLS
from .refusals import SandboxRefusal
from .state import SandboxState
from .stock import check_prg_date, check_profile

__all__ = ["CONTROL_ROUTES", "DRAIN_TIMEOUT", "add_control_routes"]

DRAIN_TIMEOUT = 30.0
ControlHandler = Callable[[web.Request, SandboxState], Awaitable[web.Response]]


def _control(handler: ControlHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def endpoint(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        try:
            return await handler(request, state)
        except SandboxRefusal as exc:
            status = exc.http_status if exc.http_status != 200 else 409
            extra: dict[str, object] = {"reason": exc.reason} if exc.reason else {}
            if exc.errorcode is not None:
                extra["errorcode"] = exc.errorcode
            return plain_error(status, exc.message, **extra)
        except ClockBackwards as exc:
            return plain_error(422, str(exc), reason="CLOCK_BACKWARDS")
        except ValueError as exc:  # BadRequest included
            return plain_error(400, str(exc))

    return endpoint


async def _drain(state: SandboxState) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.webhooks.drain(), DRAIN_TIMEOUT)


def _extcode(request: web.Request, state: SandboxState) -> str:
    extcode = request.match_info["extcode"]
    if extcode not in state.lots:
        raise SandboxRefusal("lot not found", http_status=404, reason="LOT_UNKNOWN")
    return extcode


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


async def faults_get(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer({"faults": [f.as_json() for f in state.faults]})


async def faults_post(request: web.Request, state: SandboxState) -> web.Response:
    fault = Fault.from_json(await json_object(request))
    state.add_fault(fault)
    return json_answer({"faults": [f.as_json() for f in state.faults]}, status=201)


async def faults_delete(request: web.Request, state: SandboxState) -> web.Response:
    state.clear_faults()
    return json_answer({"faults": []})


async def calls_get(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer({"calls": dict(sorted(state.calls.items()))})


def _clock_json(state: SandboxState) -> dict[str, object]:
    return {
        "now": state.now(),
        "nextTick": state.next_tick(),
        "offsetSeconds": state.offset,
        "tickedUpTo": state.ticked_upto,
    }


async def clock_get(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer(_clock_json(state))


async def clock_post(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request, optional=True)
    if "advanceTo" in body and "advanceBy" in body:
        raise BadRequest("give advanceTo or advanceBy, not both")
    if "advanceTo" in body:
        target = as_instant(body["advanceTo"], "advanceTo")
    elif "advanceBy" in body:
        by = body["advanceBy"]
        if isinstance(by, int) and not isinstance(by, bool) and by >= 0:
            target = state.now() + by
        elif isinstance(by, str):
            duration = parse_duration(by)
            target = int(add_duration(state.now(), duration, state.rules.zone))
        else:
            raise BadRequest("advanceBy must be seconds >= 0 or an ISO-8601 duration")
    else:
        target = state.now()
    ticks = state.advance_to(target)
    await _drain(state)
    return json_answer({**_clock_json(state), "ticksRun": ticks})


async def lot_get(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer(state.lot_view(_extcode(request, state)))


async def lot_options_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await json_object(request)
    third = _optional_str(body, "thirdGuid")
    if third is None:
        raise BadRequest("thirdGuid is required")
    rank = None if body.get("rank") is None else as_int(body["rank"], "rank")
    placed_raw = body.get("placedAt")
    placed_at = None if placed_raw is None else as_instant(placed_raw, "placedAt")
    if third not in state.prospects:
        raise SandboxRefusal("third not found", http_status=404, reason="PROSPECT_UNKNOWN")
    check = await state.webhooks.check_option(extcode)
    if check is not None and not check[0]:
        return plain_error(409, "the remote system refused the option (pre-check)")
    option = state.add_option(
        extcode,
        third,
        rank=rank,
        placed_at=placed_at,
        partner=_optional_str(body, "partnerGuid"),
        via_api=False,
    )
    await _drain(state)
    return json_answer({"success": True, "rank": option.rank, "expDate": option.expiry}, status=201)


async def lot_reservation_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await json_object(request, optional=True)
    fields = state.validate_reservation(extcode, _optional_str(body, "thirdGuid"))
    await _drain(state)
    return json_answer({"success": True, "webhook": fields})


async def lot_withdrawal_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await json_object(request, optional=True)
    state.withdraw_reservation(extcode, _optional_str(body, "thirdGuid"))
    await _drain(state)
    return json_answer({"success": True})


async def lot_status_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await json_object(request)
    status = _optional_str(body, "status")
    if status is None:
        raise BadRequest("status is required")
    state.set_status(extcode, status, _optional_str(body, "label"))
    await _drain(state)
    return json_answer(state.lot_view(extcode))


async def prospects_get(request: web.Request, state: SandboxState) -> web.Response:
    return json_answer([t.as_json() for t in state.prospects.values()])


async def webhooks_get(request: web.Request, state: SandboxState) -> web.Response:
    await _drain(state)
    return json_answer(
        {
            **state.webhooks.describe(),
            "deliveries": [d.as_json() for d in state.webhooks.deliveries],
        }
    )


async def webhooks_put(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    targets = body.get("targets")
    if targets is not None and not isinstance(targets, dict):
        raise BadRequest("targets must be an object {kind: url}")
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise BadRequest("token must be a string")
    token_in = body.get("tokenIn")
    if token_in is not None and not isinstance(token_in, list):
        raise BadRequest("tokenIn must be a list of 'header' / 'query'")
    state.webhooks.configure(targets=targets, token=token, token_in=token_in)
    return json_answer(state.webhooks.describe())


async def webhooks_drop(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    count = as_int(body.get("count"), "count")
    state.webhooks.drop_next(count)
    return json_answer(state.webhooks.describe())


async def settings_post(request: web.Request, state: SandboxState) -> web.Response:
    body = await json_object(request)
    if "quirks" in body:
        if not isinstance(body["quirks"], bool):
            raise BadRequest("quirks must be a boolean")
        state.quirks = body["quirks"]
    if "profile" in body:
        try:
            state.profile = check_profile(str(body["profile"]))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if "prgDate" in body:
        try:
            state.prg_date = check_prg_date(str(body["prgDate"]))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if "twoOptionsResult" in body:
        value = body["twoOptionsResult"]
        if value == 1:
            state.two_options_result = 1
        elif value == -3:
            state.two_options_result = -3
        else:
            raise BadRequest("twoOptionsResult must be 1 or -3")
    if "maxOptionsPerUser" in body:
        per_user = body["maxOptionsPerUser"]
        if per_user is not None and (
            not isinstance(per_user, int) or isinstance(per_user, bool) or per_user < 1
        ):
            raise BadRequest("maxOptionsPerUser must be an integer >= 1 or null")
        state.rules = replace(state.rules, max_options_per_user=per_user)
    if "maxOptionsPerProspect" in body:
        per_prospect = body["maxOptionsPerProspect"]
        if not isinstance(per_prospect, int) or isinstance(per_prospect, bool) or per_prospect < 1:
            raise BadRequest("maxOptionsPerProspect must be an integer >= 1")
        state.rules = replace(state.rules, max_options_per_prospect=per_prospect)
    return json_answer(
        {
            "quirks": state.quirks,
            "profile": state.profile,
            "prgDate": state.prg_date,
            "twoOptionsResult": state.two_options_result,
            "maxOptionsPerUser": state.rules.max_options_per_user,
            "maxOptionsPerProspect": state.rules.max_options_per_prospect,
        }
    )


CONTROL_ROUTES: tuple[tuple[str, str, ControlHandler], ...] = (
    ("GET", "/_sandbox/faults", faults_get),
    ("POST", "/_sandbox/faults", faults_post),
    ("DELETE", "/_sandbox/faults", faults_delete),
    ("GET", "/_sandbox/calls", calls_get),
    ("GET", "/_sandbox/clock", clock_get),
    ("POST", "/_sandbox/clock", clock_post),
    ("GET", "/_sandbox/lots/{extcode}", lot_get),
    ("POST", "/_sandbox/lots/{extcode}/options", lot_options_post),
    ("POST", "/_sandbox/lots/{extcode}/reservation", lot_reservation_post),
    ("POST", "/_sandbox/lots/{extcode}/withdrawal", lot_withdrawal_post),
    ("POST", "/_sandbox/lots/{extcode}/status", lot_status_post),
    ("GET", "/_sandbox/prospects", prospects_get),
    ("GET", "/_sandbox/webhooks", webhooks_get),
    ("PUT", "/_sandbox/webhooks", webhooks_put),
    ("POST", "/_sandbox/webhooks/drop", webhooks_drop),
    ("POST", "/_sandbox/settings", settings_post),
    *DENONCIATION_CONTROLS,
    *LEAD_CONTROLS,
)


def add_control_routes(app: web.Application) -> None:
    """The controls under ``/_sandbox/``."""
    for verb, path, control in CONTROL_ROUTES:
        app.router.add_route(verb, path, _control(control))
