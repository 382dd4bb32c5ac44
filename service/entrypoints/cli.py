"""`koban-options`: the operator's command line.

Sub-commands: `lot`, `intents`, `events tail`, `sync`, `clock`, `scheduler` (`--check`),
`api`, `run`, `sandbox`, `diagram`. Times shown are the tenant's clock (a sandbox tenant's
test clock, marked so). In a folder where `run` is running, commands about its sandbox
tenant reach it through ``./var/run.json`` (`run_file`). `--json` prints the API's own
answer shapes; the exit codes are `EXIT_CODES` (also in the help text and docs/cli.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import orjson

from service.bootstrap import KobanConfigError, build_tenants, koban_session, missing_keys
from service.config import ENV_PREFIX, ConfigError, Settings, load_settings
from service.entrypoints import diagram, run_file
from service.entrypoints.api.worker_metrics import Workers
from service.entrypoints.run_file import RunInfo
from service.koban import KobanClient, KobanError, KobanUnavailable
from service.storage.errors import STORE_FAILURES
from service.storage.event_stream import StreamTail
from service.storage.heartbeat import ping
from service.storage.redis_client import connect
from service.tenancy import Tenant, Tenants
from service.usecases.intents import list_pending, resolve_one
from service.usecases.sandbox_clock import is_sandbox, refresh_all
from service.usecases.sync import SyncReport, reconcile_lot
from service.usecases.sync_runs import SyncInProgress, claim_sync, last_run
from statecharts.errors import RuleViolation
from statecharts.model import Lot
from statecharts.ticks import next_tick, to_iso

if TYPE_CHECKING:
    from service.entrypoints.api.auth import Caller

DEV_KOBAN_API_KEY = "sandbox-api-key"
DEV_KOBAN_USER_KEY = "sandbox-user-key"
TOKEN_VAR = f"{ENV_PREFIX}TOKEN"
API_TIMEOUT_S = 300.0  # advancing a clock by weeks runs every tick passed before answering

# Exit codes (the help text and docs/cli.md list the same).
OK, NOT_FOUND, USAGE, UNAVAILABLE = 0, 1, 2, 3
EXIT_CODES = {
    OK: "done",
    NOT_FOUND: "not found (lot, intent); `scheduler --check`: no fresh heartbeat",
    USAGE: "bad configuration or usage (unknown tenant, missing keys or token, input the "
    "API refused)",
    UNAVAILABLE: "Redis, Koban or the API unavailable, Koban answered an error, or a sync "
    "of the tenant is already running",
}

T = TypeVar("T")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Setup:
    """The configuration a command runs with, and the `run` it reaches (if any)."""

    settings: Settings
    run: RunInfo | None = None


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        print(f"koban-options: bad configuration\n{e}", file=sys.stderr)
        raise SystemExit(USAGE) from e


def _setup(tenant: str | None) -> Setup:
    """The configuration, or that of the `run` in this folder when `run_file` adopts it
    (one stderr line says which, when there is a run file)."""
    adoption = run_file.adopt(tenant, os.environ)
    if adoption.note is not None:
        print(adoption.note, file=sys.stderr, flush=True)
    settings = _settings()
    if adoption.info is None:
        return Setup(settings)
    return Setup(_run_settings(settings, adoption.info), adoption.info)


def _run_settings(base: Settings, info: RunInfo) -> Settings:
    """What `run` itself runs with: its sandbox tenant alone, its Redis, its keys."""
    from service.entrypoints.run import DEV, dev_settings

    dev = replace(
        DEV,
        tenant=info.tenant,
        token=info.token,
        koban_api_key=info.koban_api_key,
        koban_user_key=info.koban_user_key,
        webhook_secret=info.webhook_secret,
    )
    settings = dev_settings(base, info.sandbox_url, dev)
    return settings.model_copy(
        update={
            "redis_url": info.redis_url,
            "api_port": info.api_port,
            "sandbox_port": info.sandbox_port,
            "log_format": base.log_format,
        }
    )


def _redis_url(settings: Settings) -> str:
    return os.environ.get("REDIS_URL") or settings.redis_url


def _unknown_tenant(settings: Settings, name: str) -> bool:
    if name in settings.tenants:
        return False
    print(f"unknown tenant {name!r}", file=sys.stderr)
    return True


async def _with_tenants(settings: Settings, action: Callable[[Tenants], Awaitable[int]]) -> int:
    """`action` on the configured tenants, their test clocks read from Redis first (so
    every time shown is the tenant's); 3 when Redis is unavailable."""
    url = _redis_url(settings)
    redis = connect(url)
    try:
        tenants = build_tenants(settings, redis)
        await refresh_all(tenants.values())
        return await action(tenants)
    except BrokenPipeError:
        raise  # our reader went away (`| head`): not Redis's fault
    except STORE_FAILURES as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        await redis.aclose()


def _clock_mark(tenant: Tenant) -> str:
    return " (test clock)" if is_sandbox(tenant) else ""


def _clock_json(tenant: Tenant, now: int) -> dict[str, Any]:
    return {"now": to_iso(now), "nextTick": to_iso(next_tick(now)), "testClock": is_sandbox(tenant)}


def _print_json(value: Any, out: TextIO | None = None) -> None:
    print(orjson.dumps(value).decode(), file=out or sys.stdout, flush=True)


def _operator(tenant: Tenant) -> Caller:
    """The API's caller as the operator: every scope, every partner's holders visible."""
    from service.entrypoints.api.auth import Caller

    return Caller(tenant, "cli", frozenset({"read", "write", "admin"}), None)


# --------------------------------------------------------------------------- Koban


async def _with_koban(tenant: Tenant, action: Callable[[KobanClient], Awaitable[T]]) -> T | int:
    """`action` with a Koban client for `tenant` → its result, or the exit code after saying
    why not (2: the tenant's Koban keys are not configured; 3: Koban unavailable or in
    error). Other exceptions are the caller's."""
    problems = missing_keys(tenant.name, tenant.settings)
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return USAGE
    url = tenant.settings.koban_base_url
    try:
        async with koban_session(tenant) as koban:
            return await action(koban)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return UNAVAILABLE
    except (KobanError, KobanConfigError) as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE


RESYNC_OUTCOMES = {
    "agreed": "agreed (Koban and the service say the same)",
    "fixed": "fixed (local state now follows Koban; drift recorded)",
    "drift": "drift recorded (Koban disagrees in a way only a stock sync can fix)",
    "deferred": "deferred (the lot is changing or within the drift tolerance of a tick)",
    "unknown_lot": "Koban does not know this lot (drift recorded)",
}


async def _resync_lot(tenant: Tenant, extcode: str, out: TextIO) -> int:
    """Reconcile one lot with Koban now (GetLotStatus); prints the outcome."""
    outcome = await _with_koban(
        tenant, lambda koban: reconcile_lot(tenant, koban, extcode, tenant.clock.now())
    )
    if isinstance(outcome, int):
        return outcome
    print(f"resync {extcode}: {RESYNC_OUTCOMES.get(outcome, outcome)}", file=out)
    return OK


# --------------------------------------------------------------------------- lot


async def _show_lot(tenant_name: str, extcode: str, resync: bool, as_json: bool) -> int:
    setup = _setup(tenant_name)
    if _unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def show(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        if resync and await tenant.store.load(extcode) is not None:
            code = await _resync_lot(tenant, extcode, sys.stderr if as_json else sys.stdout)
            if code:
                return code
        now = tenant.clock.now()
        lot = await tenant.store.read(extcode, now)
        if lot is None:
            print(f"lot {extcode} is unknown to tenant {tenant_name}", file=sys.stderr)
            return NOT_FOUND
        history = await tenant.store.history(extcode)
        if as_json:
            _print_json(_lot_json(tenant, lot, history, now))
            return OK
        print(f"{lot.extcode}  {lot.status}  ({lot.config})  version {lot.version}")
        print(f"now {to_iso(now)}{_clock_mark(tenant)}   next tick {to_iso(next_tick(now))}")
        for o in sorted(lot.options, key=lambda o: o.rank):
            expiry = to_iso(o.expiry) if o.expiry is not None else "unknown"
            holder = o.holder or "(opaque)"
            flags = " prolonged" if o.prolonged else ""
            print(f"  rank {o.rank}  {holder}  expires {expiry}  [{o.source}]{flags}")
        for i in lot.intents:
            print(f"  pending intent {i.id}: rank {i.rank} for {i.holder}")
        if lot.prereservation:
            print(f"  préréservation by {lot.prereservation.holder}")
        print("history:")
        for event in history:
            print(f"  {event['time']}  {event['type']}  v{event['lotversion']}")
        return OK

    return await _with_tenants(setup.settings, show)


def _lot_json(tenant: Tenant, lot: Lot, history: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """``{"lot", "history", "clock"}``: the first two exactly as ``GET …/lots/{extcode}``
    and ``GET …/lots/{extcode}/history`` answer an admin token."""
    from service.entrypoints.api.models import HistoryOut, dump
    from service.entrypoints.api.routes_lots import lot_out, redact_event

    caller = _operator(tenant)
    items = [redact_event(e, caller) for e in history]
    return {
        "lot": dump(lot_out(lot, caller)),
        "history": dump(HistoryOut(extcode=lot.extcode, items=items)),
        "clock": _clock_json(tenant, now),
    }


# --------------------------------------------------------------------------- events


async def _tail(tenant_name: str, from_start: bool, as_json: bool) -> int:
    setup = _setup(tenant_name)
    if _unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def follow(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        tail = StreamTail.of(tenant.store)
        # A concrete position, taken before the header is printed: whatever is appended
        # after the header shows up (``$`` would only start counting at the first read).
        last = "0-0" if from_start else await tail.last_id()
        if not as_json:
            now = tenant.clock.now()
            print(
                f"{tenant_name}: events {'from the start' if from_start else 'from now'}; "
                f"now {to_iso(now)}{_clock_mark(tenant)}",
                flush=True,
            )
        # Ctrl-C / SIGTERM end the loop between two reads: cancelling a read in flight
        # can be lost (and the process left waiting) when it lands during a blocked write.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            while not stop.is_set():
                # The wait stays under the client's socket timeout, which would cut it short.
                for entry_id, e in await tail.read(last, 100, 1000):
                    last = entry_id
                    if as_json:
                        _print_json(e)
                        continue
                    who = e["data"].get("thirdGuid") or ""
                    line = f"{e['time']}  {e['subject']:<14} {e['type']:<28} {who}"
                    print(line, flush=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return OK

    return await _with_tenants(setup.settings, follow)


# --------------------------------------------------------------------------- api, daemons


async def _api(
    host: str | None,
    port: int | None,
    workers: int,
    reuse_port: bool,
    worker: Workers | None = None,
) -> int:
    from service.entrypoints.serve import serve_api, supervise

    settings = _settings()
    host, port = host or settings.api_host, port or settings.api_port
    if workers > 1:
        from service.entrypoints.api.logging import configure_logging

        configure_logging(settings.log_format, settings.log_level)
        command = [sys.executable, "-m", "service.entrypoints.cli", "api", "--host", host]
        return await supervise([*command, "--port", str(port), "--reuse-port"], workers)
    return await serve_api(
        settings, _redis_url(settings), host, port, reuse_port=reuse_port, workers=worker
    )


async def _scheduler() -> int:
    """The daemon (JSON logs) until SIGTERM/SIGINT."""
    from service.entrypoints.api.logging import configure_logging
    from service.entrypoints.scheduler import run_daemon

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    if settings.tracing:
        from service.telemetry import enable_tracing

        enable_tracing()
    url = _redis_url(settings)
    redis = connect(url)
    try:
        await ping(redis)
        return await run_daemon(build_tenants(settings, redis), redis, batch=settings.sweep_batch)
    except STORE_FAILURES as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        await redis.aclose()


async def _scheduler_check(as_json: bool) -> int:
    """0 when a scheduler's heartbeat is fresh, 1 otherwise; one line either way (with
    `as_json`: ``{"state": "ok"|"stale"|"absent"|"unknown", "heartbeatAgeSeconds",
    "error"}``)."""
    from service.entrypoints.scheduler import HEARTBEAT_TTL_S, heartbeat_age

    settings = _setup(None).settings
    url = _redis_url(settings)
    redis = connect(url, socket_connect_timeout=2, socket_timeout=2)
    age: float | None = None
    error: str | None = None
    try:
        age = await heartbeat_age(redis)
    except STORE_FAILURES as exc:
        error = f"Redis unavailable at {url}: {exc}"
    finally:
        await redis.aclose()
    if error is not None:
        state, line = "unknown", f"scheduler: unknown, {error}"
    elif age is None:
        state, line = "absent", "scheduler: no heartbeat (no scheduler running)"
    elif age > HEARTBEAT_TTL_S:
        state, line = "stale", f"scheduler: stale, last heartbeat {age:.1f} s ago"
    else:
        age = max(age, 0.0)
        state, line = "ok", f"scheduler: ok, last heartbeat {age:.1f} s ago"
    if as_json:
        rounded = round(age, 3) if age is not None else None
        _print_json({"state": state, "heartbeatAgeSeconds": rounded, "error": error})
    else:
        print(line)
    return OK if state == "ok" else NOT_FOUND


async def _koban_check(tenant_name: str, as_json: bool) -> int:
    """The read-only contract probe (`service.usecases.koban_check`): 0 when every guess
    held, 1 when one did not, 2 bad configuration, 3 Koban unavailable or in error."""
    import aiohttp

    from service.bootstrap import koban_keys
    from service.usecases.koban_check import check_koban

    settings = _setup(tenant_name).settings
    if _unknown_tenant(settings, tenant_name):
        return USAGE
    tenant = settings.tenants[tenant_name]
    try:
        api_key, user_key = koban_keys(tenant_name, tenant)
    except KobanConfigError as exc:
        print(f"koban-options: bad configuration\n{exc}", file=sys.stderr)
        return USAGE
    url = tenant.koban_base_url
    try:
        async with aiohttp.ClientSession() as session:
            koban = KobanClient(session, url, api_key, user_key, retries=1, rate_per_s=5)
            report = await check_koban(koban)
    except (KobanUnavailable, KobanError) as exc:
        print(f"koban-options: Koban at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "findings": [
                    {"method": f.method, "field": f.name, "state": f.state, "detail": f.detail}
                    for f in report.findings
                ],
                "casings": sorted(report.casings),
                "dateForms": sorted(report.date_forms),
            }
        )
    else:
        print(f"koban check {tenant_name} at {url}")
        for line in report.lines():
            print(line)
    return OK if report.ok else NOT_FOUND


async def _sandbox(host: str, port: int) -> int:
    from aiohttp import web

    from service.sandbox import SandboxState, build_sandbox_app, populate

    state = SandboxState(api_key=DEV_KOBAN_API_KEY, user_key=DEV_KOBAN_USER_KEY)
    populate(state)
    runner = web.AppRunner(build_sandbox_app(state))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"Koban sandbox on http://{host}:{port}/api/v1 ({len(state.lots)} demo lots)")
    print(f"X-ncApi: {DEV_KOBAN_API_KEY}   X-ncUser: {DEV_KOBAN_USER_KEY}  (dev keys)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    print("Koban sandbox stopped")
    return OK


# --------------------------------------------------------------------------- sync


@contextmanager
def _progress(label: str, out: TextIO) -> Iterator[Callable[[int, int], None]]:
    """`progress(done, total)` for `sync_stock`: a rich bar on a terminal, else a plain
    line on `out` at every tenth of the run (and at its end)."""
    if out is sys.stdout and sys.stdout.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lots"),
            TimeElapsedColumn(),
        )
        with Progress(*columns) as bar:
            task = bar.add_task(f"sync {label}", total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update
        return

    def line(done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done % step == 0:
            print(f"sync {label}: {done}/{total} lots", file=out, flush=True)

    yield line


def _summary(tenant: Tenant, report: SyncReport, seconds: float) -> str:
    since = "the beginning" if report.since == 0 else to_iso(report.since) + _clock_mark(tenant)
    return (
        f"{tenant.name}: imported {report.imported}, changed {report.changed}, "
        f"unchanged {report.unchanged}, deferred {report.deferred}, drift {report.drift}; "
        f"{report.seen} lots in {report.pages} pages since {since}"
        f"{' (full)' if report.full else ''} in {seconds:.1f} s"
    )


async def _sync_tenant(tenant: Tenant, full: bool, as_json: bool) -> int:
    url = tenant.settings.koban_base_url
    started = time.monotonic()
    try:
        claim = await claim_sync(tenant)
    except SyncInProgress as exc:
        print(f"koban-options: {exc}; try again when it has finished", file=sys.stderr)
        return UNAVAILABLE
    try:
        async with koban_session(tenant) as koban:
            with _progress(tenant.name, sys.stderr if as_json else sys.stdout) as progress:
                report = await claim.run(koban, tenant.clock.now(), full=full, progress=progress)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return UNAVAILABLE
    except KobanError as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    line = _summary(tenant, report, time.monotonic() - started)
    print(line, file=sys.stderr if as_json else sys.stdout, flush=True)
    return OK


async def _sync_status(tenant: Tenant) -> dict[str, Any]:
    """The tenant's latest sync run exactly as ``GET /v1/tenants/{t}/sync`` answers it."""
    from service.entrypoints.api.models import dump
    from service.entrypoints.api.routes_sync import SyncStatusOut

    run = await last_run(tenant)
    if run is None:
        return dump(SyncStatusOut(state="never"))
    return dump(SyncStatusOut.model_validate(run, from_attributes=True))


async def _sync(tenant_name: str | None, full: bool, as_json: bool) -> int:
    settings = _setup(tenant_name).settings
    if tenant_name is not None and _unknown_tenant(settings, tenant_name):
        return USAGE
    names = [tenant_name] if tenant_name is not None else sorted(settings.tenants)
    if not names:
        print("koban-options: no tenant configured", file=sys.stderr)
        return USAGE
    problems = [p for name in names for p in missing_keys(name, settings.tenants[name])]
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return USAGE

    async def sync_all(tenants: Tenants) -> int:
        code = OK
        reports: dict[str, Any] = {}
        for name in names:
            code = await _sync_tenant(tenants[name], full, as_json)
            reports[name] = await _sync_status(tenants[name])
            if code:
                break
        if as_json:
            _print_json(reports[tenant_name] if tenant_name is not None else reports)
        return code

    return await _with_tenants(settings, sync_all)


# --------------------------------------------------------------------------- intents


def _age(seconds: int) -> str:
    seconds = max(0, seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


async def _list_intents(tenant: Tenant, as_json: bool) -> int:
    from service.entrypoints.api.models import PendingPlacementOut, dump

    now = tenant.clock.now()
    pending = await list_pending(tenant)
    if as_json:
        # Each item is a lot answer's `pendingPlacements` entry, with the lot's extcode.
        items = [
            {
                "extcode": p.extcode,
                **dump(
                    PendingPlacementOut(
                        intent_id=p.intent_id,
                        rank=p.rank,
                        third_guid=p.third,
                        partner_guid=p.partner,
                        created_at=p.created_at,
                    )
                ),
            }
            for p in pending
        ]
        _print_json({"items": items, "clock": _clock_json(tenant, now)})
        return OK
    if not pending:
        print(f"{tenant.name}: no pending intents at {to_iso(now)}{_clock_mark(tenant)}")
        return OK
    print(f"{'intent':<14} {'lot':<16} {'rank':>4}  {'third':<26} {'age':>7}  created")
    for p in pending:
        print(
            f"{p.intent_id:<14} {p.extcode:<16} {p.rank:>4}  {p.third:<26} "
            f"{_age(now - p.created_at):>7}  {to_iso(p.created_at)}"
        )
    print(
        f"{len(pending)} pending at {to_iso(now)}{_clock_mark(tenant)}; "
        f"resolve one: koban-options intents {tenant.name} --resolve=ID"
    )
    return OK


async def _resolve_intent(tenant: Tenant, intent_id: str) -> int:
    try:
        res = await _with_koban(
            tenant, lambda koban: resolve_one(tenant, koban, None, intent_id, tenant.clock.now())
        )
    except RuleViolation:
        print(f"no pending intent {intent_id} in tenant {tenant.name}", file=sys.stderr)
        return NOT_FOUND
    if isinstance(res, int):
        return res
    print(f"intent {res.intent_id} on {res.extcode} (rank {res.rank}, {res.third}): {res.outcome}")
    option = res.option
    if option is not None:
        expiry = to_iso(option.expiry) if option.expiry is not None else "unknown"
        mark = _clock_mark(tenant)
        print(f"  option {option.id}: rank {option.rank}, expires {expiry}{mark} [{option.source}]")
    return OK


async def _intents(tenant_name: str, resolve: str | None, as_json: bool) -> int:
    setup = _setup(tenant_name)
    if _unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def act(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        if resolve is None:
            return await _list_intents(tenant, as_json)
        return await _resolve_intent(tenant, resolve)

    return await _with_tenants(setup.settings, act)


# --------------------------------------------------------------------------- clock


def _call_api(method: str, url: str, token: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON answer) of one API request; OSError when the API cannot be reached."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return err.code, {"message": raw.decode(errors="replace")[:200]}


def _clock(
    tenant_name: str,
    advance_by: str | None,
    advance_to: str | None,
    api: str | None,
    token: str | None,
    as_json: bool,
) -> int:
    """Read or advance a sandbox tenant's test clock through the API's clock route, so
    whatever serves that API (the sandbox under `run` included) follows."""
    setup = _setup(tenant_name)
    settings = setup.settings
    base = api or (
        setup.run.api_url if setup.run else f"http://{settings.api_host}:{settings.api_port}"
    )
    token = token or os.environ.get(TOKEN_VAR) or (setup.run.token if setup.run else None)
    if not token:
        print(f"koban-options: no API token: pass --token or set {TOKEN_VAR}", file=sys.stderr)
        return USAGE
    url = f"{base.rstrip('/')}/v1/tenants/{tenant_name}/clock"
    body: dict[str, str] | None = None
    if advance_by is not None:
        body = {"advanceBy": advance_by}
    elif advance_to is not None:
        body = {"advanceTo": advance_to}
    try:
        status, answer = _call_api("GET" if body is None else "POST", url, token, body)
    except OSError as exc:
        print(f"koban-options: API unavailable at {base}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    if status >= 300:
        code = answer.get("errorCode", "") if isinstance(answer, dict) else ""
        message = answer.get("message", "") if isinstance(answer, dict) else ""
        print(f"koban-options: {status} {code}: {message}".rstrip(": "), file=sys.stderr)
        for error in answer.get("errors") or [] if isinstance(answer, dict) else []:
            print(f"  {error.get('field')}: {error.get('message')}", file=sys.stderr)
        return UNAVAILABLE if status >= 500 else USAGE
    if as_json:
        _print_json(answer)
    elif body is None:
        offset = _age(int(answer["offsetSeconds"]))
        print(
            f"{tenant_name}: now {answer['now']} (test clock, {offset} ahead of real time), "
            f"next tick {answer['nextTick']}"
        )
    else:
        ticks = answer["ticksRun"]
        ran = f"; {len(ticks)} ticks run" + (f", {ticks[0]} … {ticks[-1]}" if ticks else "")
        print(f"{tenant_name}: now {answer['now']} (test clock){ran}")
    return OK


# --------------------------------------------------------------------------- main

DESCRIPTION = """The operator's command line of koban-options.

Times shown are the tenant's clock; a sandbox tenant's test clock is marked "(test clock)".
In the folder where `koban-options run` is running, commands about its sandbox tenant use
./var/run.json (its Redis, API and development keys) unless REDIS_URL or any
KOBAN_OPTIONS_* variable is set; one stderr line says so. See docs/cli.md."""


def _epilog() -> str:
    lines = ["exit codes:"]
    for code, text in EXIT_CODES.items():
        lines += textwrap.wrap(text, 78, initial_indent=f"  {code}  ", subsequent_indent="     ")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koban-options",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    json_help = "print JSON, in the API's own answer shapes (see docs/cli.md)"
    p = sub.add_parser("diagram", help="render the lot statechart (Mermaid, SVG/PNG with dot)")
    p.add_argument("outdir", nargs="?", default="docs")
    p.add_argument("--format", choices=["mermaid", "svg", "png"], default="svg")
    p = sub.add_parser("lot", help="a lot's state, options, next tick and history")
    p.add_argument("tenant")
    p.add_argument("extcode")
    p.add_argument("--resync", action="store_true", help="reconcile it with Koban first")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser("events", help="the event stream")
    events = p.add_subparsers(dest="events_command", required=True)
    p = events.add_parser("tail", help="follow a tenant's events (Ctrl-C stops)")
    p.add_argument("tenant")
    p.add_argument("--from-start", action="store_true")
    p.add_argument("--json", action="store_true", help="one CloudEvent (JSON) per line")
    p = sub.add_parser("sync", help="one stock import from Koban, with a progress bar")
    p.add_argument("--tenant", help="only this tenant (default: every configured tenant)")
    p.add_argument("--full", action="store_true", help="read every lot, not only changes")
    p.add_argument("--json", action="store_true", help=json_help)
    p = sub.add_parser("intents", help="pending placement intents; resolve one by asking Koban")
    p.add_argument("tenant")
    p.add_argument(
        "--resolve",
        metavar="ID",
        help="ask Koban and settle this intent now (write --resolve=ID: ids may start with '-')",
    )
    p.add_argument("--json", action="store_true", help=json_help + " (the listing only)")
    p = sub.add_parser(
        "clock", help="a sandbox tenant's test clock: read it, or advance it (through the API)"
    )
    p.add_argument("tenant")
    moves = p.add_mutually_exclusive_group()
    moves.add_argument("--advance-by", metavar="DURATION", help="ISO-8601 duration, e.g. P1DT2H")
    moves.add_argument("--advance-to", metavar="INSTANT", help="ISO-8601 instant with offset")
    p.add_argument("--api", metavar="URL", help="the API (default: the run's, else api_host/port)")
    p.add_argument("--token", help=f"an API token (default: ${TOKEN_VAR}, else the run's)")
    p.add_argument("--json", action="store_true", help="print the API's answer as it is")
    p = sub.add_parser("api", help="the internal HTTP API and Koban's webhooks")
    p.add_argument("--host", help="listen address (default: api_host of the configuration)")
    p.add_argument("--port", type=int, help="listen port (default: api_port)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port (SO_REUSEPORT), each a replica (default 1)",
    )
    # Set by the supervisor of `--workers N` for each of its processes.
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workers-dir", help=argparse.SUPPRESS)
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so other processes may serve the same port",
    )
    p = sub.add_parser(
        "scheduler", help="the daemon: ticks, catch-up, notices, sync, reconciliation, intents"
    )
    p.add_argument(
        "--check", action="store_true", help="exit 0 when a scheduler's heartbeat is fresh, else 1"
    )
    p.add_argument("--json", action="store_true", help="with --check: the verdict as JSON")
    sub.add_parser(
        "run", help="everything in one process: API, scheduler, Koban sandbox, private Redis"
    )
    p = sub.add_parser("koban", help="probe a tenant's Koban")
    koban = p.add_subparsers(dest="koban_command", required=True)
    p = koban.add_parser(
        "check", help="read-only contract probe: exit 0 when every guess held, 1 otherwise"
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p = sub.add_parser("sandbox", help="the Koban simulator alone, with demo stock")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    if args.command == "intents" and as_json and args.resolve is not None:
        parser.error("--json lists the pending intents; it does not go with --resolve")
    if args.command == "scheduler" and as_json and not args.check:
        parser.error("--json goes with --check")

    try:
        if args.command == "diagram":
            return diagram.main([args.outdir, "--format", args.format])
        if args.command == "lot":
            return asyncio.run(_show_lot(args.tenant, args.extcode, args.resync, as_json))
        if args.command == "events":
            return asyncio.run(_tail(args.tenant, args.from_start, as_json))
        if args.command == "sync":
            return asyncio.run(_sync(args.tenant, args.full, as_json))
        if args.command == "intents":
            return asyncio.run(_intents(args.tenant, args.resolve, as_json))
        if args.command == "clock":
            return _clock(
                args.tenant, args.advance_by, args.advance_to, args.api, args.token, as_json
            )
        if args.command == "sandbox":
            return asyncio.run(_sandbox(args.host, args.port))
        if args.command == "koban":
            return asyncio.run(_koban_check(args.tenant, as_json))
        if args.command == "run":
            from service.entrypoints.run import main_run

            return main_run(_settings())
        if args.command == "api":
            if args.workers < 1:
                parser.error("--workers must be at least 1")
            worker = None
            if args.workers_dir is not None:
                worker = Workers(Path(args.workers_dir), args.worker_index)
            return asyncio.run(_api(args.host, args.port, args.workers, args.reuse_port, worker))
        if args.command == "scheduler":
            return asyncio.run(_scheduler_check(as_json) if args.check else _scheduler())
    except KeyboardInterrupt:
        return OK
    except BrokenPipeError:
        # The reader of our output stopped early (`| head`): what it read is all it wanted.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    parser.error(f"unknown command {args.command}")
    return USAGE


if __name__ == "__main__":
    raise SystemExit(main())
