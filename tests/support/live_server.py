"""The API app and the Koban sandbox on loopback, served by an event loop in a thread, for
synchronous HTTP clients (schemathesis, requests, raw sockets)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.clock import FixedClock
from service.entrypoints.api import build_api_app
from service.entrypoints.api.context import FlowSettings
from service.koban import KobanClient
from service.sandbox import build_sandbox_app
from service.storage.redis_client import connect
from service.tenancy import Tenant, Tenants
from tests.support.api_harness import (
    API_KEY,
    T0,
    USER_KEY,
    import_stock,
    make_sandbox,
    make_tenant,
)
from tests.support.subscriptions import add_subscriptions

WEBHOOK_SECRET = "wh-secret"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    response_headers_conformance,
    content_type_conformance,
]


@dataclass
class Live:
    url: str
    tenant: str


class LiveServer:
    """The API app and the sandbox on loopback, served by an event loop in a thread."""

    def __init__(self, redis_url: str, tenant: str) -> None:
        self.redis_url = redis_url
        self.tenant = tenant
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.url = ""

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _start(self) -> None:
        self.redis = connect(self.redis_url)
        clock = FixedClock(T0)
        state = make_sandbox(clock)
        koban_url = await self._serve(build_sandbox_app(state, tick_interval=None)) + "/api/v1"
        tenant = make_tenant(
            self.redis, self.tenant, clock, webhook_secret=SecretStr(WEBHOOK_SECRET)
        )
        # Subscriptions fuzzed too; private targets allowed, so no URL is looked up in DNS.
        add_subscriptions(tenant)

        def factory(tenant_: Tenant, session: Any) -> KobanClient:
            return KobanClient(
                session,
                koban_url,
                API_KEY,
                USER_KEY,
                timeout_s=2,
                connect_timeout_s=1,
                retries=0,
                rate_per_s=10_000.0,
            )

        app = build_api_app(
            Tenants({self.tenant: tenant}),
            self.redis,
            koban_factory=factory,
            flow_settings=FlowSettings(predecessor_wait_s=0.2, poll_s=0.01),
        )
        self.url = await self._serve(app)
        await import_stock(tenant.store, state, T0 - 3600)

    async def _stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        await self.redis.aclose()
