"""Outbound flows against a scripted Koban (tests/support/koban_scripted.py): Koban's paths and
answers, a tenant on a real Redis, a client with short timeouts and no retries, and `Env`,
what the flow tests hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
from redis.asyncio import Redis

from service.bootstrap import rules_from
from service.clock import FixedClock
from service.config import TenantSettings
from service.koban import KobanClient
from service.storage.store import LotStore
from service.tenancy import Tenant
from service.usecases.flows import OptionFlows
from tests.support.instants import ts
from tests.support.koban_scripted import Reply, ScriptedKoban

T0 = ts("2026-11-23T10:10:00Z")  # ten minutes after a tick: outside drift tolerance


def one_option(end: int | None = None) -> Reply:
    return Reply(json={"Result": 1, "MaxRank": 1, "EndDate": end})


def refused(code: str) -> Reply:
    return Reply(json={"success": False, "errorcode": code, "message": f"refused {code}"})


def make_tenant(redis: Redis, name: str, clock: FixedClock, **settings: Any) -> Tenant:
    ts_ = TenantSettings(**settings)
    rules = rules_from(ts_)
    return Tenant(name, ts_, rules, LotStore(redis, name, rules), clock)


def make_client(session: aiohttp.ClientSession, base_url: str) -> KobanClient:
    return KobanClient(
        session,
        base_url,
        "api",
        "user",
        timeout_s=0.5,
        connect_timeout_s=0.5,
        retries=0,
        rate_per_s=1000.0,
    )


@dataclass
class Env:
    tenant: Tenant
    clock: FixedClock
    server: ScriptedKoban
    koban: KobanClient
    flows: OptionFlows

    @property
    def store(self) -> LotStore:
        return self.tenant.store

    def paths(self) -> list[str]:
        return [s.path for s in self.server.seen]

    async def events(self) -> list[dict[str, Any]]:
        entries = cast(list[Any], await self.store.redis.xrange(self.store.keys.events))
        return [orjson.loads(fields[b"ce"]) for _, fields in entries]

    async def types(self) -> list[str]:
        return [str(e["type"]) for e in await self.events()]

    async def needs_sync(self) -> set[str]:
        members = cast(set[bytes], await self.store.redis.smembers(self.store.keys.needs_sync))
        return {m.decode() for m in members}

    async def count(self, holder: str) -> int:
        return (await self.store.counts(holder)).prospect
