"""What every command shares: the configuration it runs with (or that of the `run` in
this folder), Redis and Koban for a tenant, and the clock and JSON it prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import orjson

from service.bootstrap import KobanConfigError, build_tenants, koban_session, missing_keys
from service.config import ENV_PREFIX, ConfigError, Settings, load_settings
from service.entrypoints import run_file
from service.entrypoints.commands.exit_codes import UNAVAILABLE, USAGE
from service.entrypoints.run_file import RunInfo
from service.koban import KobanClient, KobanError, KobanUnavailable
from service.storage.errors import STORE_FAILURES
from service.storage.redis_client import connect
from service.tenancy import Tenant, Tenants
from service.usecases.sandbox_clock import is_sandbox, refresh_all
from statecharts.ticks import next_tick, to_iso

if TYPE_CHECKING:
    from service.entrypoints.api.auth import Caller

TOKEN_VAR = f"{ENV_PREFIX}TOKEN"

T = TypeVar("T")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Setup:
    """The configuration a command runs with, and the `run` it reaches (if any)."""

    settings: Settings
    run: RunInfo | None = None


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as e:
        print(f"koban-options: bad configuration\n{e}", file=sys.stderr)
        raise SystemExit(USAGE) from e


def setup_for(tenant: str | None) -> Setup:
    """The configuration, or that of the `run` in this folder when `run_file` adopts it
    (one stderr line says which, when there is a run file)."""
    adoption = run_file.adopt(tenant, os.environ)
    if adoption.note is not None:
        print(adoption.note, file=sys.stderr, flush=True)
    settings = settings_or_exit()
    if adoption.info is None:
        return Setup(settings)
    return Setup(_run_settings(settings, adoption.info), adoption.info)


def _run_settings(base: Settings, info: RunInfo) -> Settings:
    """What `run` itself runs with: its sandbox tenant alone, its Redis, its keys."""
    from service.entrypoints.run import DEV, dev_settings

    dev = replace(
        DEV,
        tenant=info.tenant,
        token=info.token,
        koban_api_key=info.koban_api_key,
        koban_user_key=info.koban_user_key,
        webhook_secret=info.webhook_secret,
    )
    settings = dev_settings(base, info.sandbox_url, dev)
    return settings.model_copy(
        update={
            "redis_url": info.redis_url,
            "api_port": info.api_port,
            "sandbox_port": info.sandbox_port,
            "log_format": base.log_format,
        }
    )


def redis_url(settings: Settings) -> str:
    return os.environ.get("REDIS_URL") or settings.redis_url


def unknown_tenant(settings: Settings, name: str) -> bool:
    if name in settings.tenants:
        return False
    print(f"unknown tenant {name!r}", file=sys.stderr)
    return True


async def with_tenants(settings: Settings, action: Callable[[Tenants], Awaitable[int]]) -> int:
    """`action` on the configured tenants, their test clocks read from Redis first (so
    every time shown is the tenant's); 3 when Redis is unavailable."""
    url = redis_url(settings)
    redis = connect(url)
    try:
        tenants = build_tenants(settings, redis)
        await refresh_all(tenants.values())
        return await action(tenants)
    except BrokenPipeError:
        raise  # our reader went away (`| head`): not Redis's fault
    except STORE_FAILURES as exc:
        print(f"koban-options: Redis unavailable at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE
    finally:
        await redis.aclose()


def clock_mark(tenant: Tenant) -> str:
    return " (test clock)" if is_sandbox(tenant) else ""


def clock_json(tenant: Tenant, now: int) -> dict[str, Any]:
    return {"now": to_iso(now), "nextTick": to_iso(next_tick(now)), "testClock": is_sandbox(tenant)}


def print_json(value: Any, out: TextIO | None = None) -> None:
    print(orjson.dumps(value).decode(), file=out or sys.stdout, flush=True)


def operator_caller(tenant: Tenant) -> Caller:
    """The API's caller as the operator: every scope, every partner's holders visible."""
    from service.entrypoints.api.auth import Caller

    return Caller(tenant, "cli", frozenset({"read", "write", "admin"}), None)


# --------------------------------------------------------------------------- Koban


async def with_koban(tenant: Tenant, action: Callable[[KobanClient], Awaitable[T]]) -> T | int:
    """`action` with a Koban client for `tenant` → its result, or the exit code after saying
    why not (2: the tenant's Koban keys are not configured; 3: Koban unavailable or in
    error). Other exceptions are the caller's."""
    problems = missing_keys(tenant.name, tenant.settings)
    if problems:
        print("koban-options: bad configuration\n" + "\n".join(problems), file=sys.stderr)
        return USAGE
    url = tenant.settings.koban_base_url
    try:
        async with koban_session(tenant) as koban:
            return await action(koban)
    except KobanUnavailable as exc:
        print(
            f"koban-options: Koban unavailable for {tenant.name} at {url}: {exc}", file=sys.stderr
        )
        return UNAVAILABLE
    except (KobanError, KobanConfigError) as exc:
        print(f"koban-options: Koban error for {tenant.name} at {url}: {exc}", file=sys.stderr)
        return UNAVAILABLE


def age_text(seconds: int) -> str:
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
