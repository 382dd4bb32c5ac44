"""`lot` and `intents` on a sandbox tenant whose test clock runs ahead of real time, run as
an operator would (`cli.main`, configuration files and environment, a real Redis): they
tell and judge by the test clock, and `--json` lists a pending placement exactly as the
lot answer does."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from service.entrypoints import cli
from service.storage.keys import TenantKeys
from service.storage.monotonic import raise_to
from service.storage.redis_client import connect
from service.storage.store import LotStore
from statecharts.model import Intent
from statecharts.ticks import to_iso
from tests.support.rules import make_rules

AHEAD = 3 * 86400  # past the two-day lifetime of an option placed now


@pytest.fixture
def sandboxed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, tenant: str) -> str:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.{tenant}]\nsandbox = true\noption_lifetime = "P2D"\n')
    monkeypatch.setenv("KOBAN_OPTIONS_TENANTS_FILE", str(tenants))
    monkeypatch.setenv("KOBAN_OPTIONS_REDIS_URL", redis_url)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env, no run file
    return tenant


def prepare(url: str, tenant: str) -> tuple[int, Intent]:
    """A1 with an option placed now (real time), A2 with a pending placement; then the
    test clock moved `AHEAD`. Returns (real now, the intent)."""

    async def run() -> tuple[int, Intent]:
        redis = connect(url)
        try:
            store = LotStore(redis, tenant, make_rules())
            now = int(time.time())
            for code in ("A1", "A2"):
                await store.import_lot(code, now, program="P1")
            await store.place_local("A1", "prospect-1", None, now)
            intent = await store.reserve_placement("A2", "prospect-2", "partner-9", now)
            await raise_to(redis, TenantKeys(tenant).clock_offset, AHEAD)
            return now, intent
        finally:
            await redis.aclose()

    return asyncio.run(run())


def test_lot_tells_and_judges_by_the_test_clock(
    sandboxed: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    real, _ = prepare(redis_url, sandboxed)
    assert cli.main(["lot", sandboxed, "A1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["clock"]["testClock"] is True
    assert shown["clock"]["now"] >= to_iso(real + AHEAD)
    # the option, due two days after `real`, is past at the test clock's now
    assert shown["lot"]["status"] == "LIBRE" and shown["lot"]["options"] == []
    assert [e["type"] for e in shown["history"]["items"]] == [
        "koban.lot.imported",
        "koban.option.placed",
    ]

    assert cli.main(["lot", sandboxed, "A1"]) == 0
    now_line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("now "))
    assert now_line.split()[1] >= to_iso(real + AHEAD) and "(test clock)" in now_line


def test_intents_json_lists_placements_as_the_lot_answer_does(
    sandboxed: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, intent = prepare(redis_url, sandboxed)
    assert cli.main(["intents", sandboxed, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert cli.main(["lot", sandboxed, "A2", "--json"]) == 0
    lot = json.loads(capsys.readouterr().out)["lot"]
    (item,) = listing["items"]
    assert item.pop("extcode") == "A2"
    assert [item] == lot["pendingPlacements"]
    assert item["intentId"] == intent.id and item["partnerGuid"] == "partner-9"
    assert listing["clock"]["testClock"] is True

    assert cli.main(["intents", sandboxed]) == 0
    out = capsys.readouterr().out
    assert "3d00h" in out  # its age on the test clock, not on the wall clock
    assert out.splitlines()[-1].startswith("1 pending at ") and "(test clock)" in out


def test_scheduler_check_json_when_redis_is_unreachable(
    sandboxed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KOBAN_OPTIONS_REDIS_URL", "redis://127.0.0.1:9/0")
    assert cli.main(["scheduler", "--check", "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["state"], verdict["heartbeatAgeSeconds"]) == ("unknown", None)
    assert "redis://127.0.0.1:9/0" in verdict["error"]
