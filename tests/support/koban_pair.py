"""The service's webhook routes and a Koban sandbox wired to each other on loopback, in one
sandbox profile (`doc` | `generic`) and `prg_date` meaning, with a Koban client and the
option flows: what a test needs to check one behaviour on both sides."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.entrypoints.koban_webhooks import add_webhook_routes
from service.koban import KobanClient
from service.sandbox import SandboxState, WebhookSender, build_sandbox_app
from service.sandbox.stock import PrgDateMeaning, Profile
from service.sandbox.webhooks import WEBHOOK_KINDS
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.tenancy import Tenant, Tenants
from service.usecases.flows import OptionFlows

__all__ = ["API_KEY", "SECRET", "USER_KEY", "Pair", "koban_pair"]

API_KEY, USER_KEY, SECRET = "pair-api", "pair-user", "pair-secret"


@dataclass
class Pair:
    tenant: Tenant
    clock: FixedClock
    state: SandboxState
    koban: KobanClient
    flows: OptionFlows
    base_url: str  # the sandbox's Koban API, .../api/v1


@contextlib.asynccontextmanager
async def koban_pair(
    redis: RedisClient,
    name: str,
    start: int,
    profile: Profile = "doc",
    prg_date: PrgDateMeaning = "deadline",
) -> AsyncIterator[Pair]:
    clock = FixedClock(start)
    settings = TenantSettings(
        webhook_secret=SECRET, sandbox_profile=profile, sandbox_prg_date=prg_date
    )
    rules = rules_from(settings)
    tenant = Tenant(name, settings, rules, LotStore(redis, name, rules), clock)
    service_app = web.Application()
    add_webhook_routes(service_app, Tenants({name: tenant}))
    service = TestServer(service_app, host="127.0.0.1")
    await service.start_server()
    hooks = f"{service.make_url('')}".rstrip("/") + f"/koban/{name}/"
    targets = {kind: hooks + kind.replace("_", "-") for kind in WEBHOOK_KINDS}
    state = SandboxState(
        api_key=API_KEY,
        user_key=USER_KEY,
        rules=rules,
        clock=clock.now,
        webhooks=WebhookSender(targets, token=SECRET),
        profile=profile,
        prg_date=prg_date,
    )
    sandbox = TestServer(build_sandbox_app(state, tick_interval=None), host="127.0.0.1")
    await sandbox.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            base_url = f"{sandbox.make_url('/api/v1')}"
            koban = KobanClient(http, base_url, API_KEY, USER_KEY, rate_per_s=1000.0)
            flows = OptionFlows(tenant, koban, poll_s=0.01)
            yield Pair(tenant, clock, state, koban, flows, base_url)
    finally:
        await sandbox.close()
        await service.close()
