"""A tenant's runtime context: its settings, rules, store and clock (the composition root
builds one per configured tenant)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from service.clock import Clock, SystemClock, TestClock
from service.config import Settings, TenantSettings
from service.redis_client import RedisClient
from service.store import LotStore
from statecharts.model import Rules


def rules_from(settings: TenantSettings) -> Rules:
    return Rules(
        zone=settings.zone,
        option_lifetime=settings.option_lifetime,
        max_options_per_prospect=settings.max_options_per_prospect,
        max_options_per_user=settings.max_options_per_user,
        rank2_clock=settings.rank2_clock,
        max_prolongation=settings.max_prolongation,
        expiring_notice=int(settings.expiring_notice.fixed_seconds()),
    )


@dataclass(slots=True)
class Tenant:
    name: str
    settings: TenantSettings
    rules: Rules
    store: LotStore
    clock: Clock


class Tenants(Mapping[str, Tenant]):
    """Every configured tenant, by name."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = dict(tenants)

    def __getitem__(self, name: str) -> Tenant:
        return self._tenants[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tenants)

    def __len__(self) -> int:
        return len(self._tenants)


def build_tenants(settings: Settings, redis: RedisClient, clock: Clock | None = None) -> Tenants:
    """One context per configured tenant; sandbox tenants get their own test clock."""
    base = clock or SystemClock()
    out = {}
    for name, ts in settings.tenants.items():
        rules = rules_from(ts)
        out[name] = Tenant(
            name=name,
            settings=ts,
            rules=rules,
            store=LotStore(redis, name, rules, history_cap=ts.history_cap),
            clock=TestClock(base) if ts.sandbox else base,
        )
    return Tenants(out)
