"""Sandbox test clocks, like Stripe's: ``GET|POST /v1/tenants/{t}/clock``.

``GET`` → ``{"now", "nextTick", "offsetSeconds"}`` (real time plus an offset that only
grows, refreshed from Redis first). ``POST`` (admin) with one of ``advanceTo`` (an instant)
or ``advanceBy`` (an ISO-8601 duration, calendar parts on the tenant's zone) processes every
tick passed through the daemon's own path (`ticking.advance_clock`) before answering
``{"now", "ticksRun"}``; backwards → 422 ``CLOCK_BACKWARDS``, beyond `MAX_ADVANCE_S` → 422,
no test clock → 403 ``CLOCK_NOT_SANDBOX``. `install_clock` also refreshes the clocks every
`REFRESH_S` (a move made by another process). Real-time TTLs never follow a test clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

import structlog
from aiohttp import web
from pydantic import Field, PlainValidator, WithJsonSchema, model_validator

from service.clock import TestClock
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import TENANTS_KEY, authenticate
from service.entrypoints.api.errors import (
    CLOCK_BACKWARDS,
    CLOCK_NOT_SANDBOX,
    IDEMPOTENCY_IN_PROGRESS,
    IDEMPOTENCY_KEY_REUSED,
    MALFORMED_REQUEST,
    ApiError,
    json_response,
    validation_failed,
)
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import (
    Instant,
    InstantIn,
    NoQuery,
    _In,
    _Out,
    canonical_body,
    dump,
)
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.routes_lots import BASE
from service.storage.errors import STORE_FAILURES
from service.tenancy import Tenant
from service.usecases.sandbox_clock import ClockBackwards, is_sandbox, refresh, refresh_all
from service.usecases.ticking import ClockHook, advance_clock
from statecharts.ticks import IsoDuration, add_duration, next_tick, parse_duration, to_iso

__all__ = [
    "CLOCK",
    "MAX_ADVANCE_S",
    "AdvanceClockIn",
    "ClockAdvancedOut",
    "ClockOut",
    "install_clock",
]

log = structlog.get_logger("service.entrypoints.api")

CLOCK = BASE + "/clock"
MAX_ADVANCE_S = 31 * 86400  # 1 488 ticks: one request stays within seconds
REFRESH_S = 1.0

routes = web.RouteTableDef()


def _duration_in(value: object) -> IsoDuration:
    if not isinstance(value, str):
        raise ValueError("expected an ISO-8601 duration such as 'PT2H' or 'P1DT30M'")
    try:
        return parse_duration(value.strip())
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 duration: {exc}") from None


DurationIn: TypeAlias = Annotated[
    IsoDuration,
    PlainValidator(_duration_in),
    WithJsonSchema({"type": "string", "format": "duration"}),
]


class AdvanceClockIn(_In):
    """Exactly one of `advanceTo` (an instant) and `advanceBy` (a duration)."""

    advance_to: InstantIn | None = Field(default=None, alias="advanceTo")
    advance_by: DurationIn | None = Field(default=None, alias="advanceBy")

    @model_validator(mode="after")
    def _exactly_one(self) -> AdvanceClockIn:
        if (self.advance_to is None) == (self.advance_by is None):
            raise ValueError("give exactly one of advanceTo and advanceBy")
        return self


class ClockOut(_Out):
    now: Instant
    next_tick: Instant
    offset_seconds: int


class ClockAdvancedOut(_Out):
    now: Instant
    ticks_run: list[Instant]


@dataclass(frozen=True, slots=True)
class _Hook:
    on_clock_advanced: ClockHook | None


_HOOK_KEY = web.AppKey("api_clock_hook", _Hook)


def _test_clock_of(caller: Caller) -> tuple[Tenant, TestClock]:
    tenant = caller.tenant
    if not is_sandbox(tenant) or not isinstance(tenant.clock, TestClock):
        raise ApiError(
            403,
            CLOCK_NOT_SANDBOX,
            f"Tenant {tenant.name!r} is not a sandbox tenant: no test clock.",
        )
    return tenant, tenant.clock


def _target(body: AdvanceClockIn, now: int, tenant: Tenant) -> int:
    if body.advance_to is not None:
        field, target = "advanceTo", body.advance_to
    else:
        assert body.advance_by is not None
        field = "advanceBy"
        try:
            target = int(add_duration(now, body.advance_by, tenant.rules.zone))
        except (OverflowError, ValueError):
            target = now + MAX_ADVANCE_S + 1
    if target - now > MAX_ADVANCE_S:
        raise validation_failed(
            [{"field": field, "message": "moves the clock more than 31 days at once"}]
        )
    return target


_NOT_SANDBOX = {403: [CLOCK_NOT_SANDBOX]}
GET_CLOCK = Operation(
    "A sandbox tenant's test clock",
    "operations",
    {200: Reply(ClockOut, "The test clock: real time plus an offset that only grows.")},
    merge(AUTH_ERRORS, _NOT_SANDBOX),
    scope=READ,
    query=NoQuery,
)


@routes.get(CLOCK)
@documented(GET_CLOCK)
async def get_clock(request: web.Request) -> web.Response:
    """The tenant's test clock."""
    caller = authenticate(request, "read")
    GET_CLOCK.parse_query(request)
    tenant, clock = _test_clock_of(caller)
    now = await refresh(tenant)
    out = ClockOut(now=now, next_tick=next_tick(now), offset_seconds=clock.offset)
    return json_response(dump(out))


MOVE_CLOCK = Operation(
    "Advance a sandbox tenant's test clock; every tick passed runs before the answer",
    "operations",
    {200: Reply(ClockAdvancedOut, "Moved; the ticks processed, in order.")},
    merge(
        AUTH_ERRORS,
        _NOT_SANDBOX,
        {
            400: [MALFORMED_REQUEST],
            409: [IDEMPOTENCY_IN_PROGRESS],
            422: [CLOCK_BACKWARDS, IDEMPOTENCY_KEY_REUSED],
        },
    ),
    scope="admin",
    query=NoQuery,
    body=AdvanceClockIn,
    idempotent=True,
    description=(
        "Exactly one of `advanceTo` (an ISO-8601 instant with an offset) and "
        "`advanceBy` (an ISO-8601 duration; calendar parts on the tenant zone's "
        "wall clock), at most 31 days at once. Before the answer, every tick passed "
        "is processed in order through the scheduler's code path; moving backwards "
        "is `422 CLOCK_BACKWARDS`; a tenant without a test clock gets "
        "`403 CLOCK_NOT_SANDBOX`."
    ),
)


@routes.post(CLOCK)
@documented(MOVE_CLOCK)
async def move_clock(request: web.Request) -> web.Response:
    """Advance the tenant's test clock; every tick passed is processed before the answer."""
    caller = authenticate(request, "admin")
    MOVE_CLOCK.parse_query(request)
    tenant, _ = _test_clock_of(caller)
    body, raw = await MOVE_CLOCK.parse_body(request)
    hook = request.app[_HOOK_KEY].on_clock_advanced

    async def action() -> web.Response:
        before = await refresh(tenant)
        target = _target(body, before, tenant)
        try:
            moved = await advance_clock(tenant, target, on_advanced=hook)
        except ClockBackwards as exc:
            raise ApiError(
                422,
                CLOCK_BACKWARDS,
                "A test clock never moves backwards; it reads "
                f"{to_iso(exc.now)}, {to_iso(exc.wanted)} is in the past.",
            ) from None
        out = ClockAdvancedOut(now=moved.now, ticks_run=[r.tick for r in moved.ticks])
        return json_response(dump(out))

    return await idempotent(request, caller, canonical_body(raw), action)


def install_clock(app: web.Application, on_clock_advanced: ClockHook | None = None) -> None:
    """The clock routes; the sandbox clocks loaded at start-up and refreshed meanwhile."""
    app[_HOOK_KEY] = _Hook(on_clock_advanced)

    async def refresher(app: web.Application) -> AsyncIterator[None]:
        tenants = [t for t in app[TENANTS_KEY].values() if is_sandbox(t)]
        if not tenants:
            yield
            return
        with contextlib.suppress(*STORE_FAILURES):
            await refresh_all(tenants)

        async def loop() -> None:
            while True:
                await asyncio.sleep(REFRESH_S)
                try:
                    await refresh_all(tenants)
                except STORE_FAILURES as exc:  # the routes refresh again anyway
                    log.warning("clock_refresh_failed", error=str(exc))

        task: asyncio.Task[Any] = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(refresher)
    app.add_routes(routes)
