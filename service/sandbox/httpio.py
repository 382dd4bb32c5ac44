"""What the sandbox's two HTTP faces (Koban's API, the ``/_sandbox`` controls) share:
the app keys, reading a request (`BadRequest` and tolerant parsers: Koban mixes the case
of its names) and writing an answer (Koban's envelope, in its quirky spelling on demand)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from statecharts.ticks import parse_instant

from .refusals import SandboxRefusal
from .state import SandboxState

__all__ = [
    "SHUTDOWN_KEY",
    "STATE_KEY",
    "BadRequest",
    "as_cents",
    "as_instant",
    "as_int",
    "json_answer",
    "json_object",
    "koban_answer",
    "lookup",
    "nested",
    "plain_error",
    "query_int",
    "refusal_answer",
    "required",
    "wire_ts",
]

STATE_KEY = web.AppKey("koban_sandbox_state", SandboxState)
SHUTDOWN_KEY = web.AppKey("koban_sandbox_shutdown", asyncio.Event)


class BadRequest(ValueError):
    """A request the sandbox cannot read (HTTP 400)."""


# --------------------------------------------------------------------------- rendering


def wire_ts(state: SandboxState, value: int | None) -> int | None:
    """A timestamp as the sandbox answers it: seconds, milliseconds in quirks mode."""
    if value is None:
        return None
    return value * 1000 if state.quirks else value


def json_answer(body: Any, status: int = 200) -> web.Response:
    """``web.json_response`` through orjson: the standard library's encoder showed up in
    the sandbox's profile under placement load."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def koban_answer(
    state: SandboxState,
    *,
    success: bool,
    errorcode: str | None = None,
    message: str | None = None,
    status: int = 200,
    **extra: object,
) -> web.Response:
    body: dict[str, object] = {}
    if state.profile == "generic":
        # Koban's generic envelope: Success / Result / Message / Errors.
        body["Success"] = success
        body["Result"] = extra.pop("Result", None)
        if errorcode is not None:
            body["ErrorCode"] = int(errorcode) if state.quirks else errorcode
        if message is not None:
            body["Message"] = message
            if not success:
                body["Errors"] = [message]
    elif state.quirks:
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
    return json_answer(body, status=status)


def refusal_answer(state: SandboxState, exc: SandboxRefusal) -> web.Response:
    if exc.errorcode is not None:
        return koban_answer(state, success=False, errorcode=exc.errorcode, message=exc.message)
    if exc.reason:
        return koban_answer(
            state, success=False, message=exc.message, status=exc.http_status, reason=exc.reason
        )
    return koban_answer(state, success=False, message=exc.message, status=exc.http_status)


def plain_error(status: int, message: str, **extra: object) -> web.Response:
    return json_answer({"success": False, "message": message, **extra}, status=status)


# --------------------------------------------------------------------------- parsing


def lookup(obj: Mapping[str, Any], key: str) -> Any:
    """`obj[key]`, else the first key equal ignoring case (Koban mixes cases)."""
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if isinstance(name, str) and name.lower() == lowered:
            return value
    return None


def nested(obj: Mapping[str, Any], outer: str, inner: str) -> str | None:
    holder = lookup(obj, outer)
    if not isinstance(holder, Mapping):
        return None
    value = lookup(holder, inner)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadRequest(f"{outer}.{inner} must be a string")
    return str(value)


def required(value: str | None, name: str) -> str:
    if value is None:
        raise BadRequest(f"{name} is required")
    return value


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise BadRequest(f"{name} must be an integer")


def as_instant(value: Any, name: str) -> int:
    try:
        return int(parse_instant(value))
    except (ValueError, TypeError):
        raise BadRequest(f"{name} must be a UNIX timestamp") from None


def as_cents(value: Any, name: str) -> int:
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


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
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


def query_int(request: web.Request, name: str, default: int) -> int:
    raw = lookup(request.query, name)
    if raw is None or raw == "":
        return default
    value = as_int(raw, name)
    if value < 0:
        raise BadRequest(f"{name} must be >= 0")
    return value
