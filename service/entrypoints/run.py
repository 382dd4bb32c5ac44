"""`koban-options run`: the whole service in one process, for a newcomer.

One event loop holds a private ``redis-server`` child (unless ``REDIS_URL`` is set, data
under ``./var/redis/``), the Koban sandbox with demo stock, the API and the scheduler. The
sandbox tenant ``demo`` is wired both ways and both sides follow its test clock. The
banner's keys are fixed development values (`DEV`), used by nothing but this command; they
are also left in ``./var/run.json`` (0600, `run_file`) so the CLI in this folder finds the
run. The sandbox starts fresh each time while ``./var`` persists, so `run` begins with a
full stock sync (drift recorded where the service had moved on); ``rm -rf var`` resets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from pydantic import SecretStr

from service.config import ApiToken, Settings, TenantSettings
from service.entrypoints import run_file
from service.entrypoints.run_file import RunInfo
from service.sandbox import SandboxState, WebhookSender, build_sandbox_app, populate
from service.sandbox.stock import PrgDateMeaning, Profile
from service.sandbox.webhooks import OPTION_CHECK, WEBHOOK_KINDS, TokenPlace
from service.storage.errors import STORE_FAILURES
from service.storage.heartbeat import ping
from service.storage.redis_client import connect
from service.tenancy import Tenant

__all__ = ["DEV", "Banner", "DevDefaults", "RedisChild", "dev_settings", "run_all"]


@dataclass(frozen=True)
class DevDefaults:
    """The fixed development values `run` prints and uses (and nothing else does)."""

    tenant: str = "demo"
    token: str = "dev-admin-token"
    koban_api_key: str = "sandbox-api-key"
    koban_user_key: str = "sandbox-user-key"
    webhook_secret: str = "dev-webhook-secret"
    third: str = "demo-prospect-1"  # holds nothing in the demo stock
    lot: str = "HAR-A101"  # LIBRE in the demo stock


DEV = DevDefaults()
# Seals the demo's subscription secrets when KOBAN_OPTIONS_SUBSCRIPTION_KEY is unset: a
# fixed development Fernet key, like the banner's values, used by nothing but `run`.
DEV_SUBSCRIPTION_KEY = "ZGV2LXN1YnNjcmlwdGlvbi1rZXktMzItYnl0ZXMhISE="
VAR = Path("var")
REDIS_START_TIMEOUT_S = 20.0
HEADER_ONLY: tuple[TokenPlace, ...] = ("header",)


# --------------------------------------------------------------------------- redis child


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when `run` dies, even by SIGKILL (no orphan)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisChild:
    """A private redis-server on a unix socket under `directory`, AOF on."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.socket = self.directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                "koban-options run: redis-server is missing: install it "
                "(apt-get install redis-server, or `make run`, which does it as root) "
                "or set REDIS_URL to a Redis of yours"
            )
        self.proc = self._spawn(binary)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"koban-options run: redis-server exited (see {self.directory / 'redis.log'})"
                )
            if self.socket.exists():
                client = connect(self.url)
                try:
                    await ping(client)
                    return
                except STORE_FAILURES:
                    pass
                finally:
                    await client.aclose()
            if time.monotonic() > deadline:
                raise SystemExit("koban-options run: redis-server did not start in time")
            await asyncio.sleep(0.05)

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = (self.directory / "redis.log").open("ab")
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        return proc

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # redis-server flushes its AOF on SIGTERM
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- settings


def dev_settings(base: Settings, sandbox_url: str, dev: DevDefaults = DEV) -> Settings:
    """`base` with its tenants replaced by the sandbox tenant `demo` (the configured
    `[tenants.demo]` values kept when there is one), wired to the embedded sandbox."""
    configured = base.tenants.get(dev.tenant)
    demo = (configured or TenantSettings()).model_copy(
        update={
            "sandbox": True,
            "koban_base_url": sandbox_url,
            "koban_api_key": SecretStr(dev.koban_api_key),
            "koban_user_key": SecretStr(dev.koban_user_key),
            "webhook_secret": SecretStr(dev.webhook_secret),
            "api_tokens": [ApiToken(token=SecretStr(dev.token), scopes={"admin"})],
            "koban_rate_limit_per_s": max(
                50.0, configured.koban_rate_limit_per_s if configured else 0
            ),
            # A receiver on this machine (docs/subscriptions.md) is the demo's point.
            "allow_private_targets": True,
            "allow_http_targets": True,
        }
    )
    update: dict[str, object] = {"tenants": {dev.tenant: demo}, "log_format": "console"}
    if base.subscription_key is None:
        update["subscription_key"] = SecretStr(DEV_SUBSCRIPTION_KEY)
    return base.model_copy(update=update)


# --------------------------------------------------------------------------- banner


@dataclass(frozen=True)
class Banner:
    api: str
    sandbox: str
    redis: str

    def lines(self) -> list[str]:
        place = (
            f"curl -s -X POST {self.api}/v1/tenants/{DEV.tenant}/lots/{DEV.lot}/options "
            f"-H 'Authorization: Bearer {DEV.token}' -H 'Content-Type: application/json' "
            f'-d \'{{"thirdGuid": "{DEV.third}"}}\''
        )
        return [
            f"api: {self.api}",
            f"sandbox: {self.sandbox}",
            f"tenant: {DEV.tenant}",
            f"token: {DEV.token}",
            f"koban_api_key: {DEV.koban_api_key}",
            f"koban_user_key: {DEV.koban_user_key}",
            f"webhook_secret: {DEV.webhook_secret}",
            f"redis: {self.redis}",
            f"try: {place}",
        ]


# --------------------------------------------------------------------------- wiring


def sandbox_for(
    clock: Callable[[], int],
    api_url: str,
    profile: Profile = "doc",
    prg_date: PrgDateMeaning = "deadline",
    cgp_status_code: str = "CGP",
) -> SandboxState:
    """The demo Koban, on `clock`, sending its webhooks to the API's `/koban/demo/…`, in
    the demo tenant's `sandbox_profile`, `sandbox_prg_date` and `cgp_status_code`."""
    hooks = f"{api_url}/koban/{DEV.tenant}/"
    targets: dict[str, str] = {kind: hooks + kind.replace("_", "-") for kind in WEBHOOK_KINDS}
    targets[OPTION_CHECK] = hooks + "option-check"
    state = SandboxState(
        api_key=DEV.koban_api_key,
        user_key=DEV.koban_user_key,
        clock=clock,
        webhooks=WebhookSender(targets, token=DEV.webhook_secret, token_in=HEADER_ONLY),
        profile=profile,
        prg_date=prg_date,
        cgp_status_code=cgp_status_code,
    )
    populate(state)
    return state


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    from service.entrypoints.serve import start_site

    runner = await start_site(app, host, port)
    try:
        yield
    finally:
        await runner.cleanup()


async def run_all(settings: Settings, redis_url: str | None) -> int:
    """Bring everything up, print the banner, wait for Ctrl-C / SIGTERM, stop everything."""
    from service.bootstrap import build_tenants
    from service.entrypoints.api.health import metrics_of
    from service.entrypoints.api.logging import configure_logging
    from service.entrypoints.scheduler import Daemon
    from service.entrypoints.serve import build_served_api, freeze_startup_objects, wait_for_stop
    from service.storage.redis_client import connect
    from service.usecases.sandbox_clock import refresh_all

    api_url = f"http://{settings.api_host}:{settings.api_port}"
    sandbox_url = f"http://{settings.sandbox_host}:{settings.sandbox_port}"
    settings = dev_settings(settings, sandbox_url + "/api/v1")
    configure_logging("console", settings.log_level)
    if settings.tracing:
        from service.telemetry import enable_tracing

        enable_tracing()
    child = None if redis_url else RedisChild(VAR / "redis")
    async with contextlib.AsyncExitStack() as stack:
        if child is not None:
            await child.start()
            stack.callback(child.stop)
        url = redis_url or (child.url if child else "")
        redis = connect(url)
        stack.push_async_callback(redis.aclose)
        tenants = build_tenants(settings, redis)
        tenant = tenants[DEV.tenant]
        await refresh_all(tenants.values())  # the test clock where the last run left it
        state = sandbox_for(
            tenant.clock.now,
            api_url,
            tenant.settings.sandbox_profile,
            tenant.settings.sandbox_prg_date,
            tenant.settings.cgp_status_code,
        )
        await stack.enter_async_context(
            serving(build_sandbox_app(state), settings.sandbox_host, settings.sandbox_port)
        )

        def sandbox_follows(_tenant: Tenant, _now: int) -> None:
            state.catch_up()  # Koban's own ticks on the same clock (its expiry webhooks)

        api = build_served_api(tenants, redis, on_clock_advanced=sandbox_follows)
        await stack.enter_async_context(serving(api, settings.api_host, settings.api_port))
        await _first_sync(tenant)
        daemon = Daemon(tenants, redis, metrics=metrics_of(api), batch=settings.sweep_batch)
        await daemon.start()
        stack.push_async_callback(daemon.stop, "run stopped")
        freeze_startup_objects()
        info = run_info(url, api_url, sandbox_url + "/api/v1", settings)
        run_file.write(info)  # before the banner: whoever reads the banner finds the file
        stack.callback(run_file.remove, run_file.RUN_FILE, info.pid)
        for line in Banner(api_url, sandbox_url + "/api/v1", url).lines():
            print(line, flush=True)
        reason = await wait_for_stop()
        print(f"stopping ({reason})", file=sys.stderr, flush=True)
    return 0


def run_info(redis_url: str, api_url: str, sandbox_url: str, settings: Settings) -> RunInfo:
    return RunInfo(
        pid=os.getpid(),
        redis_url=redis_url,
        api_url=api_url,
        api_port=settings.api_port,
        sandbox_url=sandbox_url,
        sandbox_port=settings.sandbox_port,
        tenant=DEV.tenant,
        token=DEV.token,
        koban_api_key=DEV.koban_api_key,
        koban_user_key=DEV.koban_user_key,
        webhook_secret=DEV.webhook_secret,
    )


async def _first_sync(tenant: Tenant) -> None:
    from service.bootstrap import koban_session
    from service.usecases.sync_runs import SyncInProgress, claim_sync

    try:
        claim = await claim_sync(tenant)
    except SyncInProgress:
        return
    async with koban_session(tenant) as koban:
        report = await claim.run(koban, tenant.clock.now(), full=True)
    print(
        f"stock: {report.seen} lots from the sandbox ({report.imported} new, "
        f"{report.changed} changed, {report.drift} with drift)",
        file=sys.stderr,
        flush=True,
    )


def main_run(settings: Settings) -> int:
    return asyncio.run(run_all(settings, os.environ.get("REDIS_URL")))
