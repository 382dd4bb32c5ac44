"""`koban-options api` as a process: serves, answers with tokens, stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _start_api(
    tmp_path: Path, redis_url: str, tenant: str, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`koban-options api` for `tenant` (one read token) on a free port, with `args`."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.{tenant}]\nzone = "Europe/Paris"\n')
    port = _free_port()
    env = {
        **os.environ,
        "KOBAN_OPTIONS_TENANTS_FILE": str(tenants),
        "KOBAN_OPTIONS_REDIS_URL": redis_url,
        f"KOBAN_OPTIONS_TENANTS__{tenant.upper()}__API_TOKENS": json.dumps(
            [{"token": "cli-api-secret-token", "scopes": ["read"]}]
        ),
    }
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.entrypoints.cli", "api", "--port", str(port), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, port


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """SIGTERM, then its stderr once it has exited (the test fails if it does not)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - diagnostic
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"api did not stop on SIGTERM: {err.decode()[-2000:]}")
    return err


def test_api_serves_and_stops_on_sigterm(tmp_path: Path, redis_url: str, tenant: str) -> None:
    proc, port = _start_api(tmp_path, redis_url, tenant)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(base + "/healthz")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert (status, body) == (200, {"status": "ok"})
        status, body = _get(f"{base}/v1/tenants/{tenant}/lots", "cli-api-secret-token")
        assert status == 200 and body["items"] == []
        status, body = _get(f"{base}/v1/tenants/{tenant}/lots")
        assert status == 401 and body["errorCode"] == "UNAUTHENTICATED"
    finally:
        err = _stop(proc, 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events[0] == "api_started" and events[-1] == "api_stopped"
    assert "cli-api-secret-token" not in err.decode()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_api_workers_share_the_port_and_stop_together(
    tmp_path: Path, redis_url: str, tenant: str
) -> None:
    """`--workers 2`: two API processes on one port (SO_REUSEPORT) answer; SIGTERM to the
    supervisor stops both, and it exits 0."""
    proc, port = _start_api(tmp_path, redis_url, tenant, "--workers", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        started: list[str] = []
        while len(started) < 2:  # both workers listen on the port
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the workers did not start")
            workers = _children(proc.pid)
            started = [w for w in workers if _listens(w, port)]
            time.sleep(0.1)
        assert len(_children(proc.pid)) == 2
        for _ in range(10):  # fresh connections: either worker answers the same
            status, body = _get(f"{base}/v1/tenants/{tenant}/lots", "cli-api-secret-token")
            assert status == 200 and body["items"] == []
    finally:
        workers = _children(proc.pid)
        err = _stop(proc, 40)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert all(not Path(f"/proc/{w}").exists() for w in workers)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events.count("api_started") == 2 and events.count("api_stopped") == 2


def _listens(pid: int, port: int) -> bool:
    """Does process `pid` hold a socket listening on `port` (from /proc/net/tcp)?"""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port and inode in inodes:
            return True
    return False
