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
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BANNER_KEYS = [
    "api",
    "sandbox",
    "tenant",
    "token",
    "koban_api_key",
    "koban_user_key",
    "webhook_secret",
    "redis",
    "try",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    banner: dict[str, str]
    folder: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.banner["api"] + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.banner['token']}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stream(self) -> list[dict[str, Any]]:
        """Every event of the demo tenant's stream, paging through ``/events``."""
        items: list[dict[str, Any]] = []
        after = ""
        while True:
            query = f"?limit=1000&after={after}" if after else "?limit=1000"
            status, page = self.call("GET", "/v1/tenants/demo/events" + query)
            assert status == 200, page
            items += page["items"]
            if not page["items"]:
                return items
            after = page["next"]


def _read_banner(proc: subprocess.Popen[str]) -> dict[str, str]:
    assert proc.stdout is not None
    banner: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(banner) < len(BANNER_KEYS):
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"run ended before its banner: {banner}")
            continue
        key, sep, value = line.rstrip("\n").partition(": ")
        assert sep, f"not a banner line: {line!r}"
        banner[key] = value
    assert list(banner) == BANNER_KEYS
    return banner


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KOBAN_OPTIONS_") and k != "REDIS_URL"
    }
    env["KOBAN_OPTIONS_API_PORT"] = str(_free_port())
    env["KOBAN_OPTIONS_SANDBOX_PORT"] = str(_free_port())
    with (tmp_path / "run.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.entrypoints.cli", "run"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        yield Running(proc, _read_banner(proc), tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


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


def test_run_comes_up_places_an_option_and_stops_cleanly(running: Running) -> None:
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
