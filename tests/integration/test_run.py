"""`koban-options run`, as a newcomer runs it: from an empty folder, no REDIS_URL.

It comes up with its private redis-server, prints exactly the banner keys it documents, the
printed curl line places an option, and Ctrl-C (SIGINT) stops everything, the Redis child
included, leaving its data under ./var.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.personal_data_guard import assert_no_personal_data
from tests.support.run_process import RunProcess, start_run


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunProcess]:
    run = start_run(tmp_path)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.communicate()
        assert_no_personal_data((tmp_path / "run.log").read_text(), "run's log")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_run_comes_up_places_an_option_and_stops_cleanly(running: RunProcess) -> None:
    banner = running.banner
    assert banner["tenant"] == "demo" and banner["redis"].startswith("unix://")
    assert str(running.folder / "var" / "redis") in banner["redis"]
    children = _children_of(running.proc.pid)
    assert children, "the private redis-server child"
    run_file = running.folder / "var" / "run.json"  # for the CLI in this folder
    assert run_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(run_file.read_text())["api_url"] == banner["api"]

    # the printed curl line, executed as printed
    argv = shlex.split(banner["try"])
    assert argv[0] == "curl"
    placed = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    option = json.loads(placed.stdout)
    assert option["thirdGuid"] == "demo-prospect-1" and option["rank"] == 1, option
    lot = option["extcode"]
    status, body = running.call("GET", f"/v1/tenants/demo/lots/{lot}")
    assert status == 200 and body["status"] == "OPTION"

    # the sandbox clock moved past the expiry: the option expires at its :00/:30 tick
    expiry = option["effectiveExpiry"]
    status, moved = running.call("POST", "/v1/tenants/demo/clock", {"advanceTo": expiry})
    assert status == 200, moved
    assert expiry in moved["ticksRun"]
    assert all(t[14:16] in ("00", "30") and t.endswith(":00Z") for t in moved["ticksRun"])
    status, body = running.call("GET", f"/v1/tenants/demo/lots/{lot}")
    assert status == 200 and body["status"] == "LIBRE" and body["options"] == []
    status, history = running.call("GET", f"/v1/tenants/demo/lots/{lot}/history")
    assert status == 200
    expired = [
        e
        for e in history["items"]
        if e["type"] == "koban.option.expired" and e["data"]["optionId"] == option["optionId"]
    ]
    assert len(expired) == 1 and expired[0]["time"] == expiry
    assert expired[0]["data"]["actor"] == "sweep"
    assert expired[0] in running.stream(), "the expiry is in the tenant's event stream"

    running.proc.send_signal(signal.SIGINT)
    running.proc.wait(60)
    assert running.proc.returncode == 0
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in children), "run left a child process behind"
    assert not run_file.exists(), "a clean exit removes the run file"
    assert (running.folder / "var" / "redis" / "appendonlydir").is_dir()
