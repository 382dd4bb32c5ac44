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


def test_api_serves_and_stops_on_sigterm(tmp_path: Path, redis_url: str, tenant: str) -> None:
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
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
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
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - diagnostic
            proc.kill()
            _out, err = proc.communicate()
            pytest.fail(f"api did not stop on SIGTERM: {err.decode()[-2000:]}")
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events[0] == "api_started" and events[-1] == "api_stopped"
    assert "cli-api-secret-token" not in err.decode()
