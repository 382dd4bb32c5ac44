"""`koban-options run` as a child process in a folder of its own (its private Redis under
that folder's ``var/``), and the CLI driven as a subprocess in the same folder, with an
environment holding neither ``REDIS_URL`` nor any ``KOBAN_OPTIONS_*`` variable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
CLI = [sys.executable, "-m", "service.entrypoints.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without any configuration of the service, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("KOBAN_OPTIONS_") and k != "REDIS_URL"
    }
    return {**env, **extra}


@dataclass
class RunProcess:
    proc: subprocess.Popen[str]
    banner: dict[str, str]
    folder: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The API with the banner's token: (status, JSON answer)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.banner["api"] + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.banner['token']}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
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

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`koban-options *args` in the run's folder, nothing exported but `env`."""
        return subprocess.run(
            [*CLI, *args],
            cwd=self.folder,
            env=bare_env(**env),
            capture_output=True,
            text=True,
            timeout=300,
        )

    def cli_process(self, *args: str) -> subprocess.Popen[str]:
        """`koban-options *args` left running (`events tail`), stdout piped line by line."""
        return subprocess.Popen(
            [*CLI, *args],
            cwd=self.folder,
            env=bare_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def read_banner(proc: subprocess.Popen[str]) -> dict[str, str]:
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


def start_run(folder: Path) -> RunProcess:
    """`koban-options run` in `folder` on free ports, once its banner is printed."""
    env = bare_env(
        KOBAN_OPTIONS_API_PORT=str(free_port()), KOBAN_OPTIONS_SANDBOX_PORT=str(free_port())
    )
    with (folder / "run.log").open("w") as log:
        proc = subprocess.Popen(
            [*CLI, "run"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        return RunProcess(proc, read_banner(proc), folder)
    except BaseException:
        stop_run(proc)
        raise


def stop_run(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """SIGINT (Ctrl-C), as a person stops it; killed if it does not end in `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.communicate()
    return proc.returncode
