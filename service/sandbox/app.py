"""The Koban sandbox over HTTP: Koban's API under `/api/v1/`, test controls under `/_sandbox/`.

Routes, verbs and shapes follow docs/koban-wire.md. Every `/api/v1/` call needs headers
`X-ncApi` and `X-ncUser` equal to the configured keys (HTTP 401
`{"success": false, "message": ...}` otherwise). Before answering, the sandbox runs the
ticks its clock has passed (`SandboxState.catch_up`), as Koban expires on its own clock;
a background ticker does the same every `tick_interval` seconds so expiry webhooks fire
without traffic.

Choices where the Koban doc is silent (the README's "Semantics" section repeats them):

* GetLotStatus with two options answers `Result: -3, MaxRank: 2` (the current doc's
  explicit code; `SandboxState(two_options_result=1)` answers `1` with `MaxRank: 2`).
  EndDate is rank 1's *effective* expiry (the tick). A lot in RESV/BLOQUE/sold/custom
  holds no option and answers `Result: 0, MaxRank: 0` (Add then refuses with 02); every
  answer also carries a non-doc `Status` key with the lot's status code.
* Business refusals the doc lists are HTTP 200 `{"success": false, "errorcode": "NN",
  "message"}`: Add 01-05 (judged by the chart, in its order: the lot's state, 04 if
  PRERESV or 02 if not LIBRE/OPTION; then 05; then "already holds" (409, below); then 01;
  then 03; then a wrong Rank (409)), Prolong 01/02, Undo 01, Preresv Add/Desist 01/02.
  Prolong/Undo on an unknown lot answer 01 (no option for that lot and rank). Koban's
  limits: 3 options per prospect (`Rules.max_options_per_prospect`) and, when set,
  `Rules.max_options_per_user` counting only options placed through the API.
* Refusals the doc does not list answer `{"success": false, "message", "reason"}` with no
  `errorcode` and an HTTP status: Add for an unknown Third.Guid (never created by PostOne
  or the demo stock) -> 404 `"third not found"` (the service maps it to 404
  PROSPECT_UNKNOWN); Add on an unknown lot -> 404; a prospect already holding an option on
  the lot or a Rank other than the next free one -> 409; a prolongation whose date does
  not give a later tick -> 422; Preresv on a lot not LIBRE/OPTION, Desist of a lot not
  pre-reserved or by another prospect -> 409. `reason` is the chart's error name.
* Add without Rank takes the next free rank; DateOption (seconds, or ms above 1e11) is
  the start of the option's lifetime (the tenant's `option_lifetime`), default now.
  Part.Guid is recorded, not checked.
* ncPreresv/Desist, like Add/Prolong/Undo, fires its webhook (reservation-withdrawn);
  ncPreresv/Add fires none (the doc has no such webhook). Placed/prolonged webhooks' ExpDate
  is the effective expiry tick; PrgDate is DateProlongation as given.
* GetUpdated lists lots whose `Updated` >= `updated`, in creation order (stable while
  paging), `s` default 0, `l` default 100, at most 1000. A sold lot is `Status: "RESV"`,
  `Result: "WON"`; a custom status is the object `{"Code", "Label"}`.
* ncThird/PostOne upserts on a non-empty Extcode (same Guid returned); Type is PROSPECT
  (default) or CGP.
* `/_sandbox/` control endpoints need no key (a local test tool). Control actions wait
  until their webhooks are delivered before answering; webhooks caused by `/api/v1/` calls
  are delivered in the background, in firing order (`GET /_sandbox/webhooks` waits for them).

Control endpoints: `GET|POST|DELETE /_sandbox/faults`, `GET /_sandbox/calls` (the Koban
API calls received with valid keys, per method, faulted ones included), `GET|POST
/_sandbox/clock`, `GET /_sandbox/lots/{extcode}`, `POST /_sandbox/lots/{extcode}/options|
reservation|withdrawal|status`, `GET /_sandbox/prospects`, `GET|PUT /_sandbox/webhooks`,
`POST /_sandbox/webhooks/drop`, `POST /_sandbox/settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson
import structlog
from aiohttp import web

from statecharts.ticks import add_duration, parse_duration, parse_instant

from .state import (
    DEFAULT_PAGE,
    MAX_PAGE,
    ClockBackwards,
    Fault,
    SandboxRefusal,
    SandboxState,
)

log = structlog.get_logger("service.sandbox")

STATE_KEY = web.AppKey("koban_sandbox_state", SandboxState)
_SHUTDOWN_KEY = web.AppKey("koban_sandbox_shutdown", asyncio.Event)
DRAIN_TIMEOUT = 30.0

KobanHandler = Callable[[web.Request, SandboxState], Awaitable[web.Response]]


class BadRequest(ValueError):
    """A request the sandbox cannot read (HTTP 400)."""


# --------------------------------------------------------------------------- rendering


def _ts(state: SandboxState, value: int | None) -> int | None:
    if value is None:
        return None
    return value * 1000 if state.quirks else value


def _json(body: Any, status: int = 200) -> web.Response:
    """``web.json_response`` through orjson (the standard library's encoder was ≈ 5 % of
    the sandbox's CPU under placement load)."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _answer(
    state: SandboxState,
    *,
    success: bool,
    errorcode: str | None = None,
    message: str | None = None,
    status: int = 200,
    **extra: object,
) -> web.Response:
    body: dict[str, object] = {}
    if state.quirks:
        body["Success"] = success
        if errorcode is not None:
            body["ErrorCode"] = int(errorcode)
        if message is not None:
            body["Message"] = message
    else:
        body["success"] = success
        if errorcode is not None:
            body["errorcode"] = errorcode
        if message is not None:
            body["message"] = message
    body.update(extra)
    return _json(body, status=status)


def _refusal(state: SandboxState, exc: SandboxRefusal) -> web.Response:
    if exc.errorcode is not None:
        return _answer(state, success=False, errorcode=exc.errorcode, message=exc.message)
    if exc.reason:
        return _answer(
            state, success=False, message=exc.message, status=exc.http_status, reason=exc.reason
        )
    return _answer(state, success=False, message=exc.message, status=exc.http_status)


def _plain_error(status: int, message: str, **extra: object) -> web.Response:
    return _json({"success": False, "message": message, **extra}, status=status)


# --------------------------------------------------------------------------- parsing


def _get(obj: Mapping[str, Any], key: str) -> Any:
    """`obj[key]`, else the first key equal ignoring case (Koban mixes cases)."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return None


def _nested(obj: Mapping[str, Any], outer: str, inner: str) -> str | None:
    holder = _get(obj, outer)
    if not isinstance(holder, Mapping):
        return None
    value = _get(holder, inner)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadRequest(f"{outer}.{inner} must be a string")
    return str(value)


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise BadRequest(f"{name} is required")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise BadRequest(f"{name} must be an integer")


def _instant(value: Any, name: str) -> int:
    try:
        return int(parse_instant(value))
    except (ValueError, TypeError):
        raise BadRequest(f"{name} must be a UNIX timestamp") from None


def _cents(value: Any, name: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"{name} must be an amount in euros")
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise BadRequest(f"{name} must be an amount in euros") from None
    if not amount.is_finite() or amount < 0:
        raise BadRequest(f"{name} must be a positive amount in euros")
    return int(amount * 100)


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("a JSON object body is required")
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = _get(request.query, name)
    if raw is None or raw == "":
        return default
    value = _int(raw, name)
    if value < 0:
        raise BadRequest(f"{name} must be >= 0")
    return value


# --------------------------------------------------------------------------- Koban API


def _authorised(request: web.Request, state: SandboxState) -> bool:
    api = request.headers.get("X-ncApi", "")
    user = request.headers.get("X-ncUser", "")
    ok_api = hmac.compare_digest(api.encode(), state.api_key.encode())
    ok_user = hmac.compare_digest(user.encode(), state.user_key.encode())
    return ok_api and ok_user


async def _hang(request: web.Request, fault: Fault) -> web.Response:
    shutdown = request.app[_SHUTDOWN_KEY]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(shutdown.wait(), fault.hang_seconds)
    return _plain_error(504, "injected timeout")


def _reset(request: web.Request) -> web.Response:
    """Drop the connection with a TCP RST (SO_LINGER 0); the answer is never written."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return _plain_error(502, "injected reset")


async def _server_fault(request: web.Request, fault: Fault) -> web.Response | None:
    if fault.reset:
        return _reset(request)
    if fault.timeout:
        return await _hang(request, fault)
    if fault.status is not None:
        return _plain_error(fault.status, "injected fault")
    return None


def _koban(method: str, handler: KobanHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def endpoint(request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        if not _authorised(request, state):
            return _plain_error(401, "missing or wrong X-ncApi / X-ncUser")
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
                return _answer(
                    state, success=False, errorcode=fault.errorcode, message="injected error"
                )
        state.catch_up()
        try:
            response = await handler(request, state)
        except SandboxRefusal as exc:
            response = _refusal(state, exc)
        except BadRequest as exc:
            response = _plain_error(400, str(exc))
        if fault is not None and fault.apply:
            late = await _server_fault(request, fault)
            if late is not None:
                return late
        return response

    return endpoint


async def get_lot_status(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _get(request.query, "extcode")
    if not extcode:
        raise BadRequest("extcode is required")
    answer = state.lot_status(extcode)
    end = answer["EndDate"]
    answer["EndDate"] = _ts(state, end if isinstance(end, int) else None)
    return _json(answer)


async def option_add(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    third = _required(_nested(body, "Third", "Guid"), "Third.Guid")
    extcode = _required(_nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank_raw = _get(body, "Rank")
    rank = None if rank_raw is None else _int(rank_raw, "Rank")
    date_raw = _get(body, "DateOption")
    placed_at = None if date_raw in (None, "") else _instant(date_raw, "DateOption")
    partner = _nested(body, "Part", "Guid")
    state.add_option(extcode, third, rank=rank, placed_at=placed_at, partner=partner)
    return _answer(state, success=True)


async def option_prolong(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    extcode = _required(_nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank = _int(_get(body, "Rank"), "Rank")
    until_raw = _get(body, "DateProlongation")
    if until_raw in (None, ""):
        raise BadRequest("DateProlongation is required")
    state.prolong_option(extcode, rank, _instant(until_raw, "DateProlongation"))
    return _answer(state, success=True)


async def option_undo(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    extcode = _required(_nested(body, "Deal", "Extcode"), "Deal.Extcode")
    rank = _int(_get(body, "Rank"), "Rank")
    state.undo_option(extcode, rank)
    return _answer(state, success=True)


async def preresv_add(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    extcode = _required(_nested(body, "Deal", "Extcode"), "Deal.Extcode")
    third = _required(_nested(body, "Third", "Guid"), "Third.Guid")
    state.prereserve(
        extcode,
        third,
        price_cents=_cents(_get(body, "PrixVente"), "PrixVente"),
        deposit_cents=_cents(_get(body, "Garantie"), "Garantie"),
        partner=_nested(body, "Part", "Guid"),
    )
    return _answer(state, success=True)


async def preresv_desist(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    extcode = _required(_nested(body, "Deal", "Extcode"), "Deal.Extcode")
    third = _required(_nested(body, "Third", "Guid"), "Third.Guid")
    state.desist(extcode, third)
    return _answer(state, success=True)


async def _updated(
    request: web.Request, state: SandboxState, process_code: str | None
) -> web.Response:
    raw = _get(request.query, "updated")
    updated = 0 if raw in (None, "") else _instant(raw, "updated")
    start = _query_int(request, "s", 0)
    length = _query_int(request, "l", DEFAULT_PAGE) or DEFAULT_PAGE
    total, page = state.updated_lots(updated, start, min(length, MAX_PAGE), process_code)
    if state.quirks:
        for lot in page:
            value = lot["Updated"]
            lot["Updated"] = _ts(state, value if isinstance(value, int) else None)
    return _json({"Length": total, "List": page})


async def deal_get_updated(request: web.Request, state: SandboxState) -> web.Response:
    return await _updated(request, state, None)


async def deal_get_updated_process(request: web.Request, state: SandboxState) -> web.Response:
    code = _get(request.query, "processcode")
    if not code:
        raise BadRequest("processcode is required")
    return await _updated(request, state, code)


async def deal_process_get_all(request: web.Request, state: SandboxState) -> web.Response:
    return _json(state.deal_processes())


async def third_post_one(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)

    def text(name: str) -> str:
        value = _get(body, name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        return value

    kind = text("Type") or "PROSPECT"
    third = state.add_third(
        type=kind,
        name=text("Name"),
        first_name=text("FirstName"),
        email=text("EMail"),
        phone=text("Phone"),
        mobile=text("Mobile"),
        extcode=text("Extcode"),
        process=_nested(body, "Process", "Code"),
    )
    return _answer(state, success=True, Guid=third.guid)


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
)


# --------------------------------------------------------------------------- controls

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
            return _plain_error(status, exc.message, **extra)
        except ClockBackwards as exc:
            return _plain_error(422, str(exc), reason="CLOCK_BACKWARDS")
        except ValueError as exc:  # BadRequest included
            return _plain_error(400, str(exc))

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
    return _json({"faults": [f.as_json() for f in state.faults]})


async def faults_post(request: web.Request, state: SandboxState) -> web.Response:
    fault = Fault.from_json(await _json_object(request))
    state.add_fault(fault)
    return _json({"faults": [f.as_json() for f in state.faults]}, status=201)


async def faults_delete(request: web.Request, state: SandboxState) -> web.Response:
    state.clear_faults()
    return _json({"faults": []})


async def calls_get(request: web.Request, state: SandboxState) -> web.Response:
    return _json({"calls": dict(sorted(state.calls.items()))})


def _clock_json(state: SandboxState) -> dict[str, object]:
    return {
        "now": state.now(),
        "nextTick": state.next_tick(),
        "offsetSeconds": state.offset,
        "tickedUpTo": state.ticked_upto,
    }


async def clock_get(request: web.Request, state: SandboxState) -> web.Response:
    return _json(_clock_json(state))


async def clock_post(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request, optional=True)
    if "advanceTo" in body and "advanceBy" in body:
        raise BadRequest("give advanceTo or advanceBy, not both")
    if "advanceTo" in body:
        target = _instant(body["advanceTo"], "advanceTo")
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
    return _json({**_clock_json(state), "ticksRun": ticks})


async def lot_get(request: web.Request, state: SandboxState) -> web.Response:
    return _json(state.lot_view(_extcode(request, state)))


async def lot_options_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await _json_object(request)
    third = _optional_str(body, "thirdGuid")
    if third is None:
        raise BadRequest("thirdGuid is required")
    rank = None if body.get("rank") is None else _int(body["rank"], "rank")
    placed_raw = body.get("placedAt")
    placed_at = None if placed_raw is None else _instant(placed_raw, "placedAt")
    if third not in state.prospects:
        raise SandboxRefusal("third not found", http_status=404, reason="PROSPECT_UNKNOWN")
    check = await state.webhooks.check_option(extcode)
    if check is not None and not check[0]:
        return _plain_error(409, "the remote system refused the option (pre-check)")
    option = state.add_option(
        extcode,
        third,
        rank=rank,
        placed_at=placed_at,
        partner=_optional_str(body, "partnerGuid"),
        via_api=False,
    )
    await _drain(state)
    return _json({"success": True, "rank": option.rank, "expDate": option.expiry}, status=201)


async def lot_reservation_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await _json_object(request, optional=True)
    fields = state.validate_reservation(extcode, _optional_str(body, "thirdGuid"))
    await _drain(state)
    return _json({"success": True, "webhook": fields})


async def lot_withdrawal_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await _json_object(request, optional=True)
    state.withdraw_reservation(extcode, _optional_str(body, "thirdGuid"))
    await _drain(state)
    return _json({"success": True})


async def lot_status_post(request: web.Request, state: SandboxState) -> web.Response:
    extcode = _extcode(request, state)
    body = await _json_object(request)
    status = _optional_str(body, "status")
    if status is None:
        raise BadRequest("status is required")
    state.set_status(extcode, status, _optional_str(body, "label"))
    await _drain(state)
    return _json(state.lot_view(extcode))


async def prospects_get(request: web.Request, state: SandboxState) -> web.Response:
    return _json([t.as_json() for t in state.prospects.values()])


async def webhooks_get(request: web.Request, state: SandboxState) -> web.Response:
    await _drain(state)
    return _json(
        {
            **state.webhooks.describe(),
            "deliveries": [d.as_json() for d in state.webhooks.deliveries],
        }
    )


async def webhooks_put(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
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
    return _json(state.webhooks.describe())


async def webhooks_drop(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    count = _int(body.get("count"), "count")
    state.webhooks.drop_next(count)
    return _json(state.webhooks.describe())


async def settings_post(request: web.Request, state: SandboxState) -> web.Response:
    body = await _json_object(request)
    if "quirks" in body:
        if not isinstance(body["quirks"], bool):
            raise BadRequest("quirks must be a boolean")
        state.quirks = body["quirks"]
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
    return _json(
        {
            "quirks": state.quirks,
            "twoOptionsResult": state.two_options_result,
            "maxOptionsPerUser": state.rules.max_options_per_user,
            "maxOptionsPerProspect": state.rules.max_options_per_prospect,
        }
    )


# --------------------------------------------------------------------------- app


def build_sandbox_app(state: SandboxState, *, tick_interval: float | None = 1.0) -> web.Application:
    """The Koban simulator; `tick_interval` (seconds) runs passed ticks in the background
    (None: only on requests and `POST /_sandbox/clock`)."""
    app = web.Application()
    app[STATE_KEY] = state
    app[_SHUTDOWN_KEY] = asyncio.Event()
    for verb, method, handler in KOBAN_ROUTES:
        app.router.add_route(verb, f"/api/v1/{method}", _koban(method, handler))
    controls: tuple[tuple[str, str, ControlHandler], ...] = (
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
    )
    for verb, path, control in controls:
        app.router.add_route(verb, path, _control(control))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await state.webhooks.start()
        ticker: asyncio.Task[None] | None = None
        if tick_interval is not None:
            ticker = asyncio.create_task(_tick_forever(state, tick_interval))
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            await state.webhooks.close()

    async def wake_hangs(app: web.Application) -> None:
        app[_SHUTDOWN_KEY].set()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(wake_hangs)
    return app


async def _tick_forever(state: SandboxState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            state.catch_up()
        except Exception:  # keep ticking; the next request retries the same ticks
            log.exception("sandbox_tick_failed")
