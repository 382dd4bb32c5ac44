"""The Koban sandbox over HTTP: Koban's API under ``/api/v1/`` (`koban_api`), test
controls under ``/_sandbox/`` (`controls`), and a background ticker that runs the ticks
the sandbox clock passes, so expiry webhooks fire without traffic. docs/sandbox.md says
what the sandbox answers where Koban's doc is silent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from .controls import add_control_routes
from .httpio import SHUTDOWN_KEY, STATE_KEY
from .koban_api import add_koban_routes
from .state import SandboxState

__all__ = ["STATE_KEY", "build_sandbox_app"]

log = structlog.get_logger("service.sandbox")


def build_sandbox_app(state: SandboxState, *, tick_interval: float | None = 1.0) -> web.Application:
    """The Koban simulator; `tick_interval` (seconds) runs passed ticks in the background
    (None: only on requests and `POST /_sandbox/clock`)."""
    app = web.Application()
    app[STATE_KEY] = state
    app[SHUTDOWN_KEY] = asyncio.Event()
    add_koban_routes(app)
    add_control_routes(app)

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
        app[SHUTDOWN_KEY].set()

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
