"""The long-running commands: `api` (one process or a supervisor of N), `scheduler` (and
its `--check`), `sandbox` (the Koban simulator alone).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from service.bootstrap import build_tenants
from service.entrypoints.api.worker_metrics import Workers
from service.entrypoints.commands.common import print_json, redis_url, settings_or_exit, setup_for
from service.entrypoints.commands.exit_codes import NOT_FOUND, OK, UNAVAILABLE
from service.storage.errors import STORE_FAILURES
from service.storage.heartbeat import ping
from service.storage.redis_client import connect

DEV_KOBAN_API_KEY = "sandbox-api-key"
DEV_KOBAN_USER_KEY = "sandbox-user-key"


async def api(
    host: str | None,
    port: int | None,
    workers: int,
    reuse_port: bool,
    worker: Workers | None = None,
) -> int:
    from service.entrypoints.serve import serve_api, supervise

    settings = settings_or_exit()
    host, port = host or settings.api_host, port or settings.api_port
    if workers > 1:
        from service.entrypoints.api.logging import configure_logging

        configure_logging(settings.log_format, settings.log_level)
        command = [sys.executable, "-m", "service.entrypoints.cli", "api", "--host", host]
        return await supervise([*command, "--port", str(port), "--reuse-port"], workers)
    return await serve_api(
        settings, redis_url(settings), host, port, reuse_port=reuse_port, workers=worker
    )


async def scheduler() -> int:
    """The daemon (JSON logs) until SIGTERM/SIGINT."""
    from service.entrypoints.api.logging import configure_logging
    from service.entrypoints.scheduler import run_daemon

    settings = settings_or_exit()
    configure_logging(settings.log_format, settings.log_level)
    if settings.tracing:
        from service.telemetry import enable_tracing

        enable_tracing()
    url = redis_url(settings)
    redis = connect(url)
    try:
        await ping(redis)
        return await run_daemon(build_tenants(settings, redis), redis, batch=settings.sweep_batch)
    except STORE_FAILURES as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        await redis.aclose()


async def scheduler_check(as_json: bool) -> int:
    """0 when a scheduler's heartbeat is fresh, 1 otherwise; one line either way (with
    `as_json`: ``{"state": "ok"|"stale"|"absent"|"unknown", "heartbeatAgeSeconds",
    "error"}``)."""
    from service.entrypoints.scheduler import HEARTBEAT_TTL_S, heartbeat_age

    settings = setup_for(None).settings
    url = redis_url(settings)
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
        print_json({"state": state, "heartbeatAgeSeconds": rounded, "error": error})
    else:
        print(line)
    return OK if state == "ok" else NOT_FOUND


async def sandbox(host: str, port: int) -> int:
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
