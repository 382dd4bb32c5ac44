"""The operator's commands, run as a person would (real Redis, real configuration files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.entrypoints import cli
from service.storage.redis_client import connect
from service.storage.store import LotStore
from tests.support.rules import make_rules

T0 = 1_795_000_000 - 1_795_000_000 % 1800


@pytest.fixture
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, tenant: str) -> str:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.{tenant}]\nzone = "Europe/Paris"\n')
    monkeypatch.setenv("KOBAN_OPTIONS_TENANTS_FILE", str(tenants))
    monkeypatch.setenv("KOBAN_OPTIONS_REDIS_URL", redis_url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tenant


def test_lot_shows_state_options_and_history(
    configured: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> None:
        redis = connect(redis_url)
        store = LotStore(redis, configured, make_rules())
        await store.import_lot("A1", T0, program="P1")
        # placed far in the future so the real clock's lazy expiry keeps it
        await store.place_local("A1", "prospect-1", None, T0 + 10 * 365 * 86400)
        await redis.aclose()

    asyncio.run(setup())
    assert cli.main(["lot", configured, "A1"]) == 0
    out = capsys.readouterr().out
    assert "A1  OPTION  (one_option)" in out
    assert "rank 1  prospect-1" in out
    assert "koban.lot.imported" in out and "koban.option.placed" in out


def test_lot_unknown(configured: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lot", configured, "NOPE"]) == 1
    assert "unknown" in capsys.readouterr().err


def test_bad_configuration_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "tenants.toml"
    bad.write_text('[tenants.x]\nzone = "Asia/Kathmandu"\n')
    monkeypatch.setenv("KOBAN_OPTIONS_TENANTS_FILE", str(bad))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["lot", "x", "A1"])
    assert "tenants.x.zone" in capsys.readouterr().err
