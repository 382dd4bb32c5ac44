"""The composition root: builds each tenant's context (rules, store, clock) and its Koban
client from the configuration. Entrypoints (API, scheduler, CLI, `run`) ask this module;
nothing else constructs a `LotStore` or a `KobanClient` from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp

from service.clock import Clock, SystemClock, TestClock
from service.config import ENV_DELIMITER, ENV_PREFIX, Settings, TenantSettings
from service.koban import KobanClient
from service.outbound.signing import SecretBox
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from service.storage.subscriptions import SubscriptionStore
from service.tenancy import Tenant, Tenants
from statecharts.model import Rules

KobanFactory = Callable[[Tenant, aiohttp.ClientSession], KobanClient | None]

KEYS = ("koban_api_key", "koban_user_key")


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


def build_tenants(settings: Settings, redis: RedisClient, clock: Clock | None = None) -> Tenants:
    """One context per configured tenant; sandbox tenants get their own test clock."""
    base = clock or SystemClock()
    box = secret_box(settings)
    out = {}
    for name, ts in settings.tenants.items():
        rules = rules_from(ts)
        out[name] = Tenant(
            name=name,
            settings=ts,
            rules=rules,
            store=LotStore(
                redis,
                name,
                rules,
                history_cap=ts.history_cap,
                public_base_url=settings.public_base_url,
            ),
            clock=TestClock(base) if ts.sandbox else base,
            subscriptions=SubscriptionStore(redis, name),
            secret_box=box,
        )
    return Tenants(out)


def secret_box(settings: Settings) -> SecretBox | None:
    """The box sealing subscription secrets, from ``KOBAN_OPTIONS_SUBSCRIPTION_KEY``."""
    key = settings.subscription_key
    return SecretBox(key.get_secret_value()) if key is not None else None


class KobanConfigError(ValueError):
    """A tenant lacks what its Koban client needs; `problems` names each key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(tenant: str, key: str) -> str:
    """The environment variable that sets `key` of `tenant`."""
    parts = ("tenants", tenant, key)
    return ENV_PREFIX + ENV_DELIMITER.join(p.replace("-", "_").upper() for p in parts)


def missing_keys(tenant: str, settings: TenantSettings) -> list[str]:
    """One line per Koban key the tenant lacks (empty when it has both)."""
    out = []
    for key in KEYS:
        value = getattr(settings, key)
        if value is None or not value.get_secret_value().strip():
            out.append(f"tenants.{tenant}.{key}: missing (set {env_name(tenant, key)})")
    return out


def koban_keys(tenant: str, settings: TenantSettings) -> tuple[str, str]:
    """(api key, user key), or `KobanConfigError` naming what is missing."""
    problems = missing_keys(tenant, settings)
    if problems or settings.koban_api_key is None or settings.koban_user_key is None:
        raise KobanConfigError(problems)
    return settings.koban_api_key.get_secret_value(), settings.koban_user_key.get_secret_value()


def koban_from_settings(
    tenant: Tenant,
    session: aiohttp.ClientSession,
    *,
    retries: int = 3,
    timeout_s: float = 10.0,
) -> KobanClient | None:
    """The tenant's Koban client (its base URL, keys and rate limit); None without keys."""
    if missing_keys(tenant.name, tenant.settings):
        return None
    api_key, user_key = koban_keys(tenant.name, tenant.settings)
    return KobanClient(
        session,
        tenant.settings.koban_base_url,
        api_key,
        user_key,
        retries=retries,
        timeout_s=timeout_s,
        rate_per_s=tenant.settings.koban_rate_limit_per_s,
    )


@asynccontextmanager
async def koban_session(
    tenant: Tenant, *, retries: int = 3, timeout_s: float = 10.0
) -> AsyncIterator[KobanClient]:
    """A `KobanClient` for `tenant` in its own aiohttp session, closed on exit; raises
    `KobanConfigError` naming each missing key before anything is sent."""
    koban_keys(tenant.name, tenant.settings)
    async with aiohttp.ClientSession() as session:
        client = koban_from_settings(tenant, session, retries=retries, timeout_s=timeout_s)
        assert client is not None
        yield client
