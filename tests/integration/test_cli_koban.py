"""`koban-options sync` and `koban-options intents`, run as an operator would: `cli.main`
with argv, configuration from a tenants file and the environment, a real Redis, and the
Koban sandbox (demo stock) served on loopback from a thread with its own event loop."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis as redis_sync
from aiohttp import web

from service.bootstrap import env_name
from service.entrypoints import cli
from service.sandbox import SandboxState, build_sandbox_app, populate
from service.storage.keys import TenantKeys
from service.storage.redis_client import connect
from service.storage.store import LotStore
from statecharts.model import Intent, Lot
from tests.support.rules import make_rules

API_KEY, USER_KEY = "cli-api-key", "cli-user-key"
T = TypeVar("T")


class SandboxThread:
    """The Koban sandbox with its demo stock on a loopback port, in a background thread."""

    def __init__(self) -> None:
        self.state = SandboxState(api_key=API_KEY, user_key=USER_KEY)
        populate(self.state)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner = web.AppRunner(build_sandbox_app(self.state, tick_interval=None))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="koban-sandbox", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
            self._ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
        finally:
            self.loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the sandbox's loop (its state belongs to that thread)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __enter__(self) -> SandboxThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the sandbox did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as running:
        yield running


def write_tenants(path: Path, tenant: str, base_url: str) -> None:
    path.write_text(
        f'[tenants.{tenant}]\nkoban_base_url = "{base_url}"\nkoban_rate_limit_per_s = 200\n'
    )


@pytest.fixture
def configured(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    tenant: str,
    sandbox: SandboxThread,
) -> str:
    write_tenants(tmp_path / "tenants.toml", tenant, sandbox.base_url)
    monkeypatch.setenv("KOBAN_OPTIONS_TENANTS_FILE", str(tmp_path / "tenants.toml"))
    monkeypatch.setenv("KOBAN_OPTIONS_REDIS_URL", redis_url)
    monkeypatch.setenv(env_name(tenant, "koban_api_key"), API_KEY)
    monkeypatch.setenv(env_name(tenant, "koban_user_key"), USER_KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tenant


SUMMARY = re.compile(
    r"(?P<tenant>\S+): imported (?P<imported>\d+), changed (?P<changed>\d+), "
    r"unchanged (?P<unchanged>\d+), deferred (?P<deferred>\d+), drift (?P<drift>\d+); "
    r"(?P<seen>\d+) lots in (?P<pages>\d+) pages since (?P<since>\S+)"
)


def summary(out: str) -> dict[str, int | str]:
    found = SUMMARY.search(out)
    assert found is not None, out
    return {k: int(v) if v.isdigit() else v for k, v in found.groupdict().items()}


def progress_lines(out: str, tenant: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(rf"sync {tenant}: (\d+)/(\d+) lots", out)]


def lot_count(url: str, tenant: str) -> int:
    client = redis_sync.Redis.from_url(url)
    try:
        return int(client.zcard(TenantKeys(tenant).lots))
    finally:
        client.close()


def load(url: str, tenant: str, extcode: str) -> Lot | None:
    async def run() -> Lot | None:
        redis = connect(url)
        try:
            return await LotStore(redis, tenant, make_rules()).load(extcode)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def after_the_last_change(sandbox: SandboxThread) -> None:
    """Wait until the clock is past the second of the sandbox's last change: GetUpdated
    lists lots changed at or after a run's start second, so a run starting in that very
    second would read them again (harmless, but not what the counts below expect)."""
    written = max(lot.modified_at for lot in sandbox.state.lots.values())
    while int(time.time()) <= written:
        time.sleep(0.05)


# --------------------------------------------------------------------------- sync


def test_sync_imports_the_demo_stock_then_only_what_changed(
    configured: str,
    sandbox: SandboxThread,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = configured
    total = len(sandbox.state.lots)
    after_the_last_change(sandbox)
    assert cli.main(["sync"]) == 0
    out = capsys.readouterr().out
    progress = progress_lines(out, tenant)
    assert len(progress) >= 5 and progress[-1] == (total, total)  # visible progress
    first = summary(out)
    assert first["tenant"] == tenant and first["since"] == "the"  # "since the beginning"
    assert (first["imported"], first["changed"], first["drift"]) == (total, 0, 0)
    assert first["seen"] == total and first["pages"] == 2  # 200 lots a page
    assert lot_count(redis_url, tenant) == total
    blocked = load(redis_url, tenant, "HAR-A102")
    optioned = load(redis_url, tenant, "HAR-A202")
    assert blocked is not None and blocked.config == "blocked"
    assert optioned is not None and optioned.config == "one_option"  # opaque until reconciled

    # Koban changes three lots; the second run transfers those three only.
    def change() -> None:
        sandbox.state.set_status("HAR-A103", "BLOQUE")
        sandbox.state.set_status("BEL-A101", "LIBRE")
        sandbox.state.add_lot("HAR-Z01", programme="HAR", label="Nouveau lot")

    sandbox.call(change)
    after_the_last_change(sandbox)
    assert cli.main(["sync", "--tenant", tenant]) == 0
    second = summary(capsys.readouterr().out)
    assert second["since"] != "the"
    assert (second["seen"], second["pages"]) == (3, 1)
    assert (second["imported"], second["changed"], second["drift"]) == (1, 2, 2)
    assert lot_count(redis_url, tenant) == total + 1
    reblocked, freed = load(redis_url, tenant, "HAR-A103"), load(redis_url, tenant, "BEL-A101")
    assert reblocked is not None and reblocked.config == "blocked"
    assert freed is not None and freed.config == "free"

    # Nothing changed since: an empty run; --full reads everything and finds it equal.
    assert cli.main(["sync"]) == 0
    assert summary(capsys.readouterr().out)["seen"] == 0
    assert cli.main(["sync", "--full"]) == 0
    full = summary(capsys.readouterr().out)
    assert (full["seen"], full["unchanged"], full["drift"]) == (total + 1, total + 1, 0)


def test_sync_on_a_terminal_shows_a_progress_bar(
    configured: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["sync"]) == 0
    out = capsys.readouterr().out
    assert f"sync {configured}" in out and "━" in out  # rich's bar
    assert summary(out)["imported"] == 300


def test_sync_names_missing_keys(
    configured: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(env_name(configured, "koban_user_key"))
    assert cli.main(["sync"]) == 2
    err = capsys.readouterr().err
    assert f"tenants.{configured}.koban_user_key" in err
    assert env_name(configured, "koban_user_key") in err
    assert "koban_api_key" not in err


def test_sync_when_koban_is_unavailable_or_refuses(
    configured: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(env_name(configured, "koban_api_key"), "wrong-key")
    assert cli.main(["sync"]) == 3
    assert "Koban error" in capsys.readouterr().err  # 401

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_tenants(tmp_path / "tenants.toml", configured, f"http://127.0.0.1:{port}/api/v1")
    assert cli.main(["sync", "--tenant", configured]) == 3
    err = capsys.readouterr().err
    assert "Koban unavailable" in err and f"127.0.0.1:{port}" in err
    assert cli.main(["sync", "--tenant", "nope"]) == 2


# --------------------------------------------------------------------------- intents


def reserve(url: str, tenant: str, extcode: str, third: str) -> Intent:
    async def run() -> Intent:
        redis = connect(url)
        try:
            store = LotStore(redis, tenant, make_rules())
            return await store.reserve_placement(extcode, third, None, int(time.time()) - 600)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def test_intents_lists_and_resolves(
    configured: str,
    sandbox: SandboxThread,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = configured
    assert cli.main(["sync"]) == 0
    assert cli.main(["intents", tenant]) == 0
    assert "no pending intents" in capsys.readouterr().out

    # Two placements whose Add got no answer: Koban placed the first, not the second.
    placed = reserve(redis_url, tenant, "HAR-A101", "demo-prospect-1")
    lost = reserve(redis_url, tenant, "HAR-A103", "demo-prospect-3")
    sandbox.call(lambda: sandbox.state.add_option("HAR-A101", "demo-prospect-1"))

    assert cli.main(["intents", tenant]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert rows[placed.id][1:4] == ["HAR-A101", "1", "demo-prospect-1"]
    assert rows[lost.id][1:4] == ["HAR-A103", "1", "demo-prospect-3"]
    assert rows[placed.id][4].startswith("10m")  # age
    assert out.splitlines()[-1].startswith("2 pending")

    assert cli.main(["intents", tenant, f"--resolve={placed.id}"]) == 0
    out = capsys.readouterr().out
    assert f"intent {placed.id} on HAR-A101 (rank 1, demo-prospect-1): placed" in out
    assert "rank 1, expires" in out
    lot = load(redis_url, tenant, "HAR-A101")
    assert lot is not None and [o.holder for o in lot.options] == ["demo-prospect-1"]

    assert cli.main(["intents", tenant, f"--resolve={lost.id}"]) == 0
    assert "not_placed" in capsys.readouterr().out
    lot = load(redis_url, tenant, "HAR-A103")
    assert lot is not None and lot.options == [] and lot.intents == []

    assert cli.main(["intents", tenant]) == 0
    assert "no pending intents" in capsys.readouterr().out
    assert cli.main(["intents", tenant, f"--resolve={placed.id}"]) == 1
    assert f"no pending intent {placed.id}" in capsys.readouterr().err
    assert cli.main(["intents", "nope"]) == 2


def test_lot_resync_reconciles_with_koban_first(
    configured: str,
    sandbox: SandboxThread,
    tmp_path: Path,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No drift tolerance: within 5 min after a tick the fix would rightly be deferred.
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, configured, sandbox.base_url)
    tenants.write_text(tenants.read_text() + 'drift_tolerance = "PT0S"\n')
    assert cli.main(["sync"]) == 0
    capsys.readouterr()
    before = load(redis_url, configured, "HAR-A202")
    assert before is not None and [o.deadline for o in before.options] == [None]  # opaque
    while int(time.time()) <= before.modified_at:  # a lot changed this second is deferred
        time.sleep(0.05)
    assert cli.main(["lot", configured, "HAR-A202", "--resync"]) == 0
    out = capsys.readouterr().out
    assert "resync HAR-A202: fixed" in out, out
    after = load(redis_url, configured, "HAR-A202")
    assert after is not None
    first = after.option_at(1)  # GetLotStatus gives rank 1's EndDate (not rank 2's)
    assert first is not None and first.deadline is not None and first.source == "koban"
    assert "koban.sync.drift_detected" in out  # the fix is in the lot's history


def test_sync_refused_while_another_runs(
    configured: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    try:
        client.set(TenantKeys(configured).sync_lease, "another-process", px=60_000)
        assert cli.main(["sync"]) == 3
        assert "already running" in capsys.readouterr().err
        assert lot_count(redis_url, configured) == 0
    finally:
        client.delete(TenantKeys(configured).sync_lease)
        client.close()
