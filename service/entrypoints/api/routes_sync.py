"""Stock sync on demand (docs/sync.md): ``POST /v1/tenants/{t}/sync`` (admin) starts one,
``GET /v1/tenants/{t}/sync`` (read) shows the latest run.

* ``POST`` with no body, ``{}`` or ``{"full": true}`` (read every lot, not only what
  changed since the last successful run) → ``202 {"status": "started", "full",
  "startedAt"}`` at once; the sync runs in the background (progress in the logs, the
  outcome in ``GET``, its lots' events in the stream). Another sync of the tenant running
  (API, scheduler or CLI, any process) → ``409 SYNC_IN_PROGRESS``. A tenant without Koban
  credentials → ``503 KOBAN_UNAVAILABLE``. Accepts ``Idempotency-Key`` like every write.
* ``GET`` → ``{"state": "never" | "running" | "succeeded" | "failed", "full", "startedAt",
  "finishedAt", "since", "pages", "seen", "imported", "changed", "unchanged",
  "deferred", "drift", "error", "seconds", "skipped"}`` (``skipped``: deals not
  mirrored, counted by reason).

Background runs belong to the app: the app's cleanup cancels the ones still running (their
lease is released and the run recorded as failed, so the next one starts from the same
point).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import structlog
from aiohttp import web
from pydantic import Field

from service.entrypoints.api.context import authenticate, koban_for
from service.entrypoints.api.errors import (
    IDEMPOTENCY_IN_PROGRESS,
    IDEMPOTENCY_KEY_REUSED,
    KOBAN_UNAVAILABLE,
    MALFORMED_REQUEST,
    ApiError,
    json_response,
)
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import (
    Instant,
    NoQuery,
    _In,
    _Out,
    canonical_body,
    dump,
    read_json,
)
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.routes_lots import BASE
from service.usecases.sync_runs import SyncInProgress, claim_sync, last_run

__all__ = ["SYNC", "SYNC_IN_PROGRESS", "SyncIn", "SyncStartedOut", "SyncStatusOut", "install_sync"]

log = structlog.get_logger("service.entrypoints.api")

SYNC = BASE + "/sync"
SYNC_IN_PROGRESS = "SYNC_IN_PROGRESS"


class _Runs:
    """The app's background sync runs."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()


_RUNS_KEY = web.AppKey("api_sync_runs", _Runs)

routes = web.RouteTableDef()


class SyncIn(_In):
    full: bool = Field(default=False, strict=True)


class SyncStartedOut(_Out):
    status: Literal["started"]
    full: bool
    started_at: Instant


class SyncStatusOut(_Out):
    state: Literal["never", "running", "succeeded", "failed"]
    full: bool | None = None
    started_at: Instant | None = None
    finished_at: Instant | None = None
    since: Instant | None = None
    pages: int = 0
    seen: int = 0
    imported: int = 0
    changed: int = 0
    unchanged: int = 0
    deferred: int = 0
    drift: int = 0
    error: str | None = None
    seconds: float | None = None
    skipped: dict[str, int] = Field(
        default_factory=dict,
        description="Deals Koban listed that were not mirrored, by reason: `no_extcode`, "
        "`no_status`, `other_process` (not one of the tenant's programmes), `unreadable`.",
    )


async def _optional_json(request: web.Request) -> object:
    """The JSON body, or ``{}`` when none was sent."""
    if request.content_length in (None, 0) and not request.body_exists:
        return {}
    return await read_json(request)


START_SYNC = Operation(
    "Start a stock sync from Koban now (in the background)",
    "operations",
    {202: Reply(SyncStartedOut, "Started; GET the same path for its outcome.")},
    merge(
        AUTH_ERRORS,
        {
            400: [MALFORMED_REQUEST],
            409: [SYNC_IN_PROGRESS, IDEMPOTENCY_IN_PROGRESS],
            422: [IDEMPOTENCY_KEY_REUSED],
            503: [KOBAN_UNAVAILABLE],
        },
    ),
    scope="admin",
    query=NoQuery,
    body=SyncIn,
    idempotent=True,
    description='The body is optional: none, `{}` or `{"full": true}`.',
)


@routes.post(SYNC)
@documented(START_SYNC)
async def start_sync(request: web.Request) -> web.Response:
    caller = authenticate(request, "admin")
    START_SYNC.parse_query(request)
    raw = await _optional_json(request)
    body = START_SYNC.validate_body(raw)
    tenant = caller.tenant

    async def action() -> web.Response:
        koban = koban_for(request, caller)
        try:
            claim = await claim_sync(tenant)
        except SyncInProgress as exc:
            raise ApiError(409, SYNC_IN_PROGRESS, str(exc)) from None
        now = tenant.clock.now()

        async def background() -> None:
            try:
                report = await claim.run(koban, now, full=body.full)
            except asyncio.CancelledError:
                log.warning("sync_cancelled", tenant=tenant.name)
                raise
            except Exception as exc:  # recorded in the run; the API stays up
                log.warning("sync_failed", tenant=tenant.name, error=str(exc))
                return
            log.info(
                "sync_done",
                tenant=tenant.name,
                seen=report.seen,
                imported=report.imported,
                changed=report.changed,
                drift=report.drift,
            )

        tasks = request.app[_RUNS_KEY].tasks
        task = asyncio.create_task(background())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        out = SyncStartedOut(status="started", full=body.full, started_at=now)
        return json_response(dump(out), 202)

    return await idempotent(request, caller, canonical_body(raw), action)


SYNC_STATUS = Operation(
    "The latest stock sync run of the tenant",
    "operations",
    {200: Reply(SyncStatusOut, "The latest run (state `never` before the first).")},
    AUTH_ERRORS,
    scope=READ,
    query=NoQuery,
)


@routes.get(SYNC)
@documented(SYNC_STATUS)
async def sync_status(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    SYNC_STATUS.parse_query(request)
    run = await last_run(caller.tenant)
    if run is None:
        return json_response(dump(SyncStatusOut(state="never")))
    return json_response(dump(SyncStatusOut.model_validate(run, from_attributes=True)))


def install_sync(app: web.Application) -> None:
    """The sync routes, and the cleanup that cancels background runs."""
    app[_RUNS_KEY] = _Runs()

    async def background_runs(app: web.Application) -> AsyncIterator[None]:
        yield
        tasks = list(app[_RUNS_KEY].tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(background_runs)
    app.add_routes(routes)
