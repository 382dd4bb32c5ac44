"""The operator's CLI as a person uses it right after `make run`: a subprocess in the run's
folder with nothing exported, reaching the running service through ``./var/run.json``,
telling the tenant's (test) clock, and printing the API's own answers with ``--json``.

One `run` serves the whole module (it is slow to start); each test picks lots no other
test of the module changes.
"""

from __future__ import annotations

import json
import signal
import stat
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from service.entrypoints.run_file import RunInfo
from tests.support.personal_data_guard import assert_no_personal_data
from tests.support.run_process import RunProcess, start_run, stop_run

USING = "koban-options: using var/run.json"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunProcess]:
    running = start_run(tmp_path_factory.mktemp("run"))
    try:
        yield running
    finally:
        stop_run(running.proc)
        assert_no_personal_data((running.folder / "run.log").read_text(), "run's log")


def ok(result: Any) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return str(result.stdout)


def adopted(result: Any) -> None:
    """The run file was used, and said so in one stderr line (the first)."""
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith(USING), result.stderr
    assert sum(line.startswith("koban-options: using") for line in lines) == 1


def free_lots(run: RunProcess, count: int, skip: set[str]) -> list[str]:
    status, page = run.call("GET", "/v1/tenants/demo/lots?status=LIBRE&limit=50")
    assert status == 200
    codes = [lot["extcode"] for lot in page["items"] if lot["extcode"] not in skip]
    assert len(codes) >= count
    return codes[:count]


def api_clock(run: RunProcess) -> dict[str, Any]:
    status, clock = run.call("GET", "/v1/tenants/demo/clock")
    assert status == 200, clock
    return dict(clock)


def instant(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def test_run_leaves_a_private_run_file_that_matches_its_banner(run: RunProcess) -> None:
    path = run.folder / "var" / "run.json"
    mode = path.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    info = RunInfo.from_json(path.read_bytes())
    assert info.pid == run.proc.pid
    banner = run.banner
    assert (info.api_url, info.redis_url, info.tenant) == (
        banner["api"],
        banner["redis"],
        banner["tenant"],
    )
    assert info.sandbox_url == banner["sandbox"]
    assert (info.token, info.koban_api_key, info.koban_user_key, info.webhook_secret) == (
        banner["token"],
        banner["koban_api_key"],
        banner["koban_user_key"],
        banner["webhook_secret"],
    )
    assert banner["api"].endswith(f":{info.api_port}")
    assert f":{info.sandbox_port}/" in banner["sandbox"]


def test_lot_json_is_the_apis_lot_and_history(run: RunProcess) -> None:
    before = api_clock(run)["now"]
    result = run.cli("lot", "demo", "HAR-A101", "--json")
    out = json.loads(ok(result))
    adopted(result)
    status, lot = run.call("GET", "/v1/tenants/demo/lots/HAR-A101")
    assert status == 200
    status, history = run.call("GET", "/v1/tenants/demo/lots/HAR-A101/history")
    assert status == 200
    assert out["lot"] == lot
    assert out["history"] == history
    assert out["clock"]["testClock"] is True
    assert before <= out["clock"]["now"] <= api_clock(run)["now"]  # ISO-8601 Z sorts as time


def test_sync_reaches_the_runs_sandbox_and_json_is_the_apis_report(run: RunProcess) -> None:
    result = run.cli("sync", "--tenant", "demo")
    adopted(result)
    assert "demo: imported" in ok(result)
    result = run.cli("sync", "--tenant", "demo", "--json")
    report = json.loads(ok(result))
    status, answer = run.call("GET", "/v1/tenants/demo/sync")
    assert status == 200
    assert report == answer and report["state"] == "succeeded"
    assert "sync demo:" not in result.stdout  # progress and summary kept off the JSON


def test_clock_advances_the_service_and_the_sandbox_and_lot_tells_that_time(
    run: RunProcess,
) -> None:
    (code,) = free_lots(run, 1, {"HAR-A101"})
    status, option = run.call(
        "POST", f"/v1/tenants/demo/lots/{code}/options", {"thirdGuid": "demo-prospect-2"}
    )
    assert status == 201, option
    before = api_clock(run)

    result = run.cli("clock", "demo", "--advance-by", "P2DT1H")
    adopted(result)
    line = ok(result).strip()
    after = api_clock(run)
    moved = instant(after["now"]) - instant(before["now"])
    assert moved >= 2 * 86400 + 3600  # real time went on too: at least the advance
    assert line.startswith(f"demo: now {after['now'][:13]}") and "(test clock)" in line

    # The option expired at its tick in the service, and Koban's sandbox followed the clock.
    result = run.cli("lot", "demo", code, "--json")
    shown = json.loads(ok(result))
    assert shown["lot"]["status"] == "LIBRE" and shown["lot"]["options"] == []
    expired = [e for e in shown["history"]["items"] if e["type"] == "koban.option.expired"]
    assert [e["time"] for e in expired] == [option["effectiveExpiry"]]
    status, availability = run.call(
        "GET", f"/v1/tenants/demo/lots/{code}/availability?source=koban"
    )
    assert status == 200 and availability["koban"]["result"] == 0, availability
    assert availability["drift"] is False

    # The person-readable form tells the test clock's time, not the wall clock's.
    text = ok(run.cli("lot", "demo", code)).splitlines()
    now_line = next(line for line in text if line.startswith("now "))
    shown_now = now_line.split()[1]
    assert after["now"] <= shown_now <= api_clock(run)["now"]
    assert now_line.split(maxsplit=2)[2].startswith("(test clock)")

    result = run.cli("clock", "demo", "--json")
    answer = json.loads(ok(result))
    assert set(answer) == {"now", "nextTick", "offsetSeconds"}
    assert answer["offsetSeconds"] == api_clock(run)["offsetSeconds"]


def test_clock_says_what_the_api_refused(run: RunProcess) -> None:
    result = run.cli("clock", "demo", "--advance-to", "2020-01-01T00:00:00Z")
    assert result.returncode == 2 and "422 CLOCK_BACKWARDS" in result.stderr
    result = run.cli("clock", "demo", "--advance-by", "tomorrow")
    assert result.returncode == 2 and "422 VALIDATION_FAILED" in result.stderr
    assert "advanceBy:" in result.stderr
    result = run.cli("clock", "demo", "--token", "not-a-token")
    assert result.returncode == 2 and "401 UNAUTHENTICATED" in result.stderr
    result = run.cli("clock", "demo", "--api", "http://127.0.0.1:9")
    assert result.returncode == 3 and "API unavailable at http://127.0.0.1:9" in result.stderr


def test_events_tail_follows_the_stream(run: RunProcess) -> None:
    # --json --from-start: the API's own items, in order, one CloudEvent per line
    status, page = run.call("GET", "/v1/tenants/demo/events?limit=50")
    assert status == 200 and len(page["items"]) == 50
    tail = run.cli_process("events", "tail", "demo", "--from-start", "--json")
    try:
        assert tail.stdout is not None
        lines = [json.loads(tail.stdout.readline()) for _ in range(50)]
    finally:
        tail.send_signal(signal.SIGINT)
        tail.communicate(timeout=60)
    assert lines == page["items"]
    assert tail.returncode == 0

    # text: from now on (the header is printed once the position is taken)
    (code,) = free_lots(run, 1, {"HAR-A101"})
    tail = run.cli_process("events", "tail", "demo")
    try:
        assert tail.stdout is not None
        header = tail.stdout.readline()
        assert header.startswith("demo: events from now; now ") and "(test clock)" in header
        status, _ = run.call(
            "POST", f"/v1/tenants/demo/lots/{code}/options", {"thirdGuid": "demo-prospect-3"}
        )
        assert status == 201
        line = tail.stdout.readline().split()
    finally:
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=60)
    assert line[1:4] == [code, "koban.option.placed", "demo-prospect-3"]
    assert tail.returncode == 0, err
    assert err.startswith(USING)


def test_scheduler_check_and_intents_json(run: RunProcess) -> None:
    result = run.cli("scheduler", "--check", "--json")
    verdict = json.loads(ok(result))
    assert verdict["state"] == "ok" and verdict["error"] is None
    adopted(result)
    result = run.cli("intents", "demo", "--json")
    listing = json.loads(ok(result))
    assert listing["items"] == [] and listing["clock"]["testClock"] is True


def test_the_run_file_is_ignored_when_the_environment_configures(run: RunProcess) -> None:
    result = run.cli("lot", "demo", "HAR-A101", REDIS_URL="redis://127.0.0.1:9/0")
    assert result.returncode == 3
    first, second = result.stderr.splitlines()[:2]
    assert first == "koban-options: ignoring var/run.json: REDIS_URL is set"
    assert "Redis unavailable at redis://127.0.0.1:9/0" in second
