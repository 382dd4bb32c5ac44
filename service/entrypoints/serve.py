"""Serving processes: `koban-options api` (and the pieces `run` reuses).

Everything here is started from a function on the running event loop, so the same code
serves one process per role (``api``, ``scheduler``) or everything in one (``run``).
SIGTERM or SIGINT closes the listener, lets in-flight requests finish, ends SSE streams,
then closes Redis. ``api --workers N`` (`supervise`) runs N processes on one port
(``SO_REUSEPORT``), each a replica with its own loop, pools and Koban clients; when one
ends on its own, the others are stopped. What that means for `/metrics` and the rest:
docs/semantics.md, "Serving processes".
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from aiohttp import web

from service.config import Settings
from service.entrypoints.api.app import build_api_app
from service.entrypoints.api.logging import configure_logging
from service.entrypoints.api.routes_lots import install_fast_reads
from service.entrypoints.api.worker_metrics import WORKERS_KEY, Workers
from service.storage.redis_client import RedisClient, connect
from service.telemetry import enable_tracing, tracing_enabled
from service.tenancy import Tenants

__all__ = [
    "build_served_api",
    "freeze_startup_objects",
    "serve_api",
    "start_site",
    "supervise",
    "wait_for_stop",
]

log = structlog.get_logger("service.entrypoints.serve")

# Requests in flight get this long to finish after SIGTERM (aiohttp's shutdown_timeout).
SHUTDOWN_GRACE_S = 10.0


async def wait_for_stop(signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> str:
    """Wait until one of `signals` arrives; returns its name."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    installed = []
    for sig in signals:

        def stop(sig: signal.Signals = sig) -> None:
            if not stopped.done():
                stopped.set_result(sig.name)

        loop.add_signal_handler(sig, stop)
        installed.append(sig)
    try:
        return await stopped
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def start_site(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> web.AppRunner:
    """Serve `app` on host:port (with `reuse_port`, ``SO_REUSEPORT``: other processes may
    serve the same port); the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
    return runner


async def supervise(command: Sequence[str], workers: int) -> int:
    """Run `workers` processes of `command` (each binding its port with SO_REUSEPORT)
    until SIGTERM/SIGINT (forwarded; 0) or until one ends on its own (the others are
    stopped; its exit code, or 1). Each gets `--worker-index i --workers-dir D`: the
    directory of the unix sockets through which `/metrics` gathers every worker."""
    with tempfile.TemporaryDirectory(prefix="koban-options-workers-") as directory:
        os.chmod(directory, 0o700)
        return await _supervise(command, workers, directory)


async def _supervise(command: Sequence[str], workers: int, directory: str) -> int:
    procs = [
        await asyncio.create_subprocess_exec(
            *command, "--worker-index", str(i), "--workers-dir", directory
        )
        for i in range(workers)
    ]
    ended = [asyncio.ensure_future(p.wait()) for p in procs]
    stop = asyncio.ensure_future(wait_for_stop())
    done, _ = await asyncio.wait([stop, *ended], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if stop not in done:
        stop.cancel()
        first = next(p for p, e in zip(procs, ended, strict=True) if e in done)
        code = first.returncode or 1
        log.warning("api_worker_ended", pid=first.pid, code=first.returncode)
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    try:
        async with asyncio.timeout(SHUTDOWN_GRACE_S + 5):
            await asyncio.gather(*ended)
    except TimeoutError:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*ended)
    return code


def build_served_api(source: Settings | Tenants, redis: RedisClient, **kw: Any) -> web.Application:
    """The API app as the serving commands serve it (`build_api_app`, `kw` passed on, with
    the shared-connection fast reads installed): `api` and `run` alike."""
    app = build_api_app(source, redis, **kw)
    if not tracing_enabled():  # traced, every Redis call goes through redis-py
        install_fast_reads(app, redis)
    return app


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive after start-up (modules, pydantic models,
    the OpenAPI document, the app) out of the cyclic collector's way (`gc.freeze`).
    Unfrozen, every full collection walked them all and stopped the event loop under
    placement load; the figures are in docs/benchmarks.md."""
    gc.collect()
    gc.freeze()


async def serve_api(
    settings: Settings,
    redis_url: str,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    workers: Workers | None = None,
) -> int:
    """`koban-options api`: the internal API and Koban's webhooks until SIGTERM/SIGINT;
    `workers`: one of `api --workers N`'s processes (its siblings scraped through it)."""
    configure_logging(settings.log_format, settings.log_level)
    if settings.tracing:
        enable_tracing()
    redis = connect(redis_url)
    try:
        app = build_served_api(settings, redis)
        if workers is not None:
            app[WORKERS_KEY] = workers
        runner = await start_site(app, host, port, reuse_port=reuse_port)
        if workers is not None:
            workers.socket().unlink(missing_ok=True)
            await web.UnixSite(runner, str(workers.socket())).start()
        freeze_startup_objects()
        log.info("api_started", url=f"http://{host}:{port}", tenants=sorted(settings.tenants))
        try:
            reason = await wait_for_stop()
        finally:
            await runner.cleanup()
        log.info("api_stopped", signal=reason)
        return 0
    finally:
        await redis.aclose()
