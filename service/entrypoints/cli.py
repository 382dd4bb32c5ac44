"""`koban-options`: the operator's command line (SPEC §1).

Sub-commands: `diagram`, `lot`, `events tail`, `sync`, `intents`, `api`, `scheduler`
(`--check`: is a scheduler's heartbeat fresh?), `run`, `sandbox`.
Exit codes: 0 done, 1 not found (lot, intent), 2 bad configuration or usage, 3 Koban or
Redis unavailable (or Koban answered an error).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from service.bootstrap import KobanConfigError, build_tenants, koban_session, missing_keys
from service.config import ConfigError, Settings, load_settings
from service.entrypoints import diagram
from service.entrypoints.api.worker_metrics import Workers
from service.koban import KobanClient, KobanError, KobanUnavailable
from service.storage.redis_client import connect
from service.tenancy import Tenant
from service.usecases.intents import list_pending, resolve_one
from service.usecases.sync import SyncReport, reconcile_lot
from service.usecases.sync_runs import SyncInProgress, claim_sync
from statecharts.errors import RuleViolation
from statecharts.ticks import next_tick, to_iso

DEV_KOBAN_API_KEY = "sandbox-api-key"
DEV_KOBAN_USER_KEY = "sandbox-user-key"


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        print(f"koban-options: bad configuration\n{e}", file=sys.stderr)
        raise SystemExit(2) from e


T = TypeVar("T")


def _redis_url(settings: Settings) -> str:
    return os.environ.get("REDIS_URL") or settings.redis_url


async def _with_koban(tenant: Tenant, action: Callable[[KobanClient], Awaitable[T]]) -> T | int:
    """`action` with a Koban client for `tenant` → its result, or the exit code after saying
    why not (2: the tenant's Koban keys are not configured; 3: Koban unavailable or in
    error). Other exceptions are the caller's."""
    problems = missing_keys(tenant.name, tenant.settings)
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return 2
    url = tenant.settings.koban_base_url
    try:
        async with koban_session(tenant) as koban:
            return await action(koban)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return 3
    except (KobanError, KobanConfigError) as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return 3


async def _resync_lot(tenant: Tenant, extcode: str) -> int:
    """Reconcile one lot with Koban now (GetLotStatus); prints the outcome."""
    outcome = await _with_koban(
        tenant, lambda koban: reconcile_lot(tenant, koban, extcode, tenant.clock.now())
    )
    if isinstance(outcome, int):
        return outcome
    print(f"resync {extcode}: {RESYNC_OUTCOMES.get(outcome, outcome)}")
    return 0


RESYNC_OUTCOMES = {
    "agreed": "agreed (Koban and the service say the same)",
    "fixed": "fixed (local state now follows Koban; drift recorded)",
    "drift": "drift recorded (Koban disagrees in a way only a stock sync can fix)",
    "deferred": "deferred (the lot is changing or within the drift tolerance of a tick)",
    "unknown_lot": "Koban does not know this lot (drift recorded)",
}


async def _show_lot(tenant_name: str, extcode: str, resync: bool = False) -> int:
    settings = _settings()
    redis = connect(_redis_url(settings))
    try:
        tenants = build_tenants(settings, redis)
        tenant = tenants.get(tenant_name)
        if tenant is None:
            print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
            return 2
        if resync and await tenant.store.load(extcode) is not None:
            code = await _resync_lot(tenant, extcode)
            if code:
                return code
        now = tenant.clock.now()
        lot = await tenant.store.read(extcode, now)
        if lot is None:
            print(f"lot {extcode} is unknown to tenant {tenant_name}", file=sys.stderr)
            return 1
        print(f"{lot.extcode}  {lot.status}  ({lot.config})  version {lot.version}")
        print(f"now {to_iso(now)}   next tick {to_iso(next_tick(now))}")
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
        for event in await tenant.store.history(extcode):
            print(f"  {event['time']}  {event['type']}  v{event['lotversion']}")
        return 0
    finally:
        await redis.aclose()


async def _tail(tenant_name: str, from_start: bool) -> int:
    settings = _settings()
    if tenant_name not in settings.tenants:
        print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
        return 2
    redis = connect(_redis_url(settings))
    key = build_tenants(settings, redis)[tenant_name].store.keys.events
    last = "0-0" if from_start else "$"
    try:
        while True:
            # BLOCK stays under redis-py's 5 s socket timeout (STACK.md).
            replies: Any = await redis.xread({key: last}, block=2000, count=100)
            for _, entries in replies:
                for entry_id, fields in entries:
                    last = entry_id
                    e = orjson.loads(fields[b"ce"])
                    data = e["data"]
                    who = data.get("thirdGuid") or ""
                    print(f"{e['time']}  {e['subject']:<14} {e['type']:<28} {who}", flush=True)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        await redis.aclose()


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
        await redis.ping()
        return await run_daemon(build_tenants(settings, redis), redis, batch=settings.sweep_batch)
    except (RedisError, OSError) as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return 3
    finally:
        await redis.aclose()


async def _scheduler_check() -> int:
    """0 when a scheduler's heartbeat is fresh, 1 otherwise; one line either way."""
    from service.entrypoints.scheduler import HEARTBEAT_TTL_S, heartbeat_age

    settings = _settings()
    url = _redis_url(settings)
    redis = connect(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        age = await heartbeat_age(redis)
    except (RedisError, OSError) as exc:
        print(f"scheduler: unknown, Redis unavailable at {url}: {exc}")
        return 1
    finally:
        await redis.aclose()
    if age is None:
        print("scheduler: no heartbeat (no scheduler running)")
        return 1
    if age > HEARTBEAT_TTL_S:
        print(f"scheduler: stale, last heartbeat {age:.1f} s ago")
        return 1
    print(f"scheduler: ok, last heartbeat {max(age, 0.0):.1f} s ago")
    return 0


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
    return 0


# --------------------------------------------------------------------------- sync


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """`progress(done, total)` for `sync_stock`: a rich bar on a terminal, else a plain
    line at every tenth of the run (and at its end)."""
    if sys.stdout.isatty():
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
            print(f"sync {label}: {done}/{total} lots", flush=True)

    yield line


def _summary(name: str, report: SyncReport, seconds: float) -> str:
    since = "the beginning" if report.since == 0 else to_iso(report.since)
    return (
        f"{name}: imported {report.imported}, changed {report.changed}, "
        f"unchanged {report.unchanged}, deferred {report.deferred}, drift {report.drift}; "
        f"{report.seen} lots in {report.pages} pages since {since}"
        f"{' (full)' if report.full else ''} in {seconds:.1f} s"
    )


async def _sync_tenant(tenant: Tenant, full: bool) -> int:
    url = tenant.settings.koban_base_url
    started = time.monotonic()
    try:
        claim = await claim_sync(tenant)
    except SyncInProgress as exc:
        print(f"koban-options: {exc}; try again when it has finished", file=sys.stderr)
        return 3
    try:
        async with koban_session(tenant) as koban:
            with _progress(tenant.name) as progress:
                report = await claim.run(koban, tenant.clock.now(), full=full, progress=progress)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return 3
    except KobanError as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return 3
    print(_summary(tenant.name, report, time.monotonic() - started), flush=True)
    return 0


async def _sync(tenant_name: str | None, full: bool) -> int:
    settings = _settings()
    if tenant_name is not None and tenant_name not in settings.tenants:
        print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
        return 2
    names = [tenant_name] if tenant_name is not None else sorted(settings.tenants)
    if not names:
        print("koban-options: no tenant configured", file=sys.stderr)
        return 2
    problems = [p for name in names for p in missing_keys(name, settings.tenants[name])]
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return 2
    url = _redis_url(settings)
    redis = connect(url)
    try:
        tenants = build_tenants(settings, redis)
        for name in names:
            code = await _sync_tenant(tenants[name], full)
            if code:
                return code
        return 0
    except (RedisError, OSError) as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return 3
    finally:
        await redis.aclose()


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


async def _list_intents(tenant: Tenant) -> int:
    now = tenant.clock.now()
    pending = await list_pending(tenant)
    if not pending:
        print(f"{tenant.name}: no pending intents")
        return 0
    print(f"{'intent':<14} {'lot':<16} {'rank':>4}  {'third':<26} {'age':>7}  created")
    for p in pending:
        print(
            f"{p.intent_id:<14} {p.extcode:<16} {p.rank:>4}  {p.third:<26} "
            f"{_age(now - p.created_at):>7}  {to_iso(p.created_at)}"
        )
    print(f"{len(pending)} pending; resolve one: koban-options intents {tenant.name} --resolve=ID")
    return 0


async def _resolve_intent(tenant: Tenant, intent_id: str) -> int:
    try:
        res = await _with_koban(
            tenant, lambda koban: resolve_one(tenant, koban, None, intent_id, tenant.clock.now())
        )
    except RuleViolation:
        print(f"no pending intent {intent_id} in tenant {tenant.name}", file=sys.stderr)
        return 1
    if isinstance(res, int):
        return res
    print(f"intent {res.intent_id} on {res.extcode} (rank {res.rank}, {res.third}): {res.outcome}")
    option = res.option
    if option is not None:
        expiry = to_iso(option.expiry) if option.expiry is not None else "unknown"
        print(f"  option {option.id}: rank {option.rank}, expires {expiry} [{option.source}]")
    return 0


async def _intents(tenant_name: str, resolve: str | None) -> int:
    settings = _settings()
    if tenant_name not in settings.tenants:
        print(f"unknown tenant {tenant_name!r}", file=sys.stderr)
        return 2
    url = _redis_url(settings)
    redis = connect(url)
    try:
        tenant = build_tenants(settings, redis)[tenant_name]
        if resolve is None:
            return await _list_intents(tenant)
        return await _resolve_intent(tenant, resolve)
    except (RedisError, OSError) as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return 3
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="koban-options", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("diagram", help="render the lot statechart (Mermaid, SVG/PNG with dot)")
    p.add_argument("outdir", nargs="?", default="docs")
    p.add_argument("--format", choices=["mermaid", "svg", "png"], default="svg")
    p = sub.add_parser("lot", help="a lot's state, options, next tick and history")
    p.add_argument("tenant")
    p.add_argument("extcode")
    p.add_argument("--resync", action="store_true", help="reconcile it with Koban first")
    p = sub.add_parser("events", help="the event stream")
    events = p.add_subparsers(dest="events_command", required=True)
    p = events.add_parser("tail", help="follow a tenant's events")
    p.add_argument("tenant")
    p.add_argument("--from-start", action="store_true")
    p = sub.add_parser("sync", help="one stock import from Koban, with a progress bar")
    p.add_argument("--tenant", help="only this tenant (default: every configured tenant)")
    p.add_argument("--full", action="store_true", help="read every lot, not only changes")
    p = sub.add_parser("intents", help="pending placement intents; resolve one by asking Koban")
    p.add_argument("tenant")
    p.add_argument(
        "--resolve",
        metavar="ID",
        help="ask Koban and settle this intent now (write --resolve=ID: ids may start with '-')",
    )
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
    sub.add_parser(
        "run", help="everything in one process: API, scheduler, Koban sandbox, private Redis"
    )
    p = sub.add_parser("sandbox", help="the Koban simulator alone, with demo stock")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)

    try:
        if args.command == "diagram":
            return diagram.main([args.outdir, "--format", args.format])
        if args.command == "lot":
            return asyncio.run(_show_lot(args.tenant, args.extcode, args.resync))
        if args.command == "events":
            return asyncio.run(_tail(args.tenant, args.from_start))
        if args.command == "sync":
            return asyncio.run(_sync(args.tenant, args.full))
        if args.command == "intents":
            return asyncio.run(_intents(args.tenant, args.resolve))
        if args.command == "sandbox":
            return asyncio.run(_sandbox(args.host, args.port))
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
            return asyncio.run(_scheduler_check() if args.check else _scheduler())
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
