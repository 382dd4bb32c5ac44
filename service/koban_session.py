"""A tenant's Koban client, built from its settings, inside its own aiohttp session.

The keys (`X-ncApi`, `X-ncUser`) come only from the tenant's secrets
(`koban_api_key`, `koban_user_key`: environment or `.env`); a tenant without them gets a
`KobanConfigError` naming each missing key and the variable that sets it, before anything
is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from service.config import ENV_DELIMITER, ENV_PREFIX, TenantSettings
from service.koban import KobanClient
from service.tenancy import Tenant

KEYS = ("koban_api_key", "koban_user_key")


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


@asynccontextmanager
async def koban_session(
    tenant: Tenant, *, retries: int = 3, timeout_s: float = 10.0
) -> AsyncIterator[KobanClient]:
    """A `KobanClient` for `tenant` (its base URL, keys and rate limit), closed on exit."""
    api_key, user_key = koban_keys(tenant.name, tenant.settings)
    async with aiohttp.ClientSession() as session:
        yield KobanClient(
            session,
            tenant.settings.koban_base_url,
            api_key,
            user_key,
            retries=retries,
            timeout_s=timeout_s,
            rate_per_s=tenant.settings.koban_rate_limit_per_s,
        )
