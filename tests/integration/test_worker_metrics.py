"""`/metrics` under `api --workers 2` answers for both workers, whichever takes the scrape."""

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.entrypoints.api.worker_metrics import merge

TOKEN = "worker-metrics-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests_to(text: str, route: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "koban_options_http_requests":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("route") == route:
                    total += s.value
    return total


def _workers_seen(text: str) -> set[str]:
    return {
        s.labels["worker"]
        for family in text_string_to_metric_families(text)
        if family.name.startswith("process_")
        for s in family.samples
        if "worker" in s.labels
    }


@pytest.fixture
def two_workers(tmp_path: Path, redis_url: str, tenant: str) -> Iterator[tuple[str, str]]:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.{tenant}]\nzone = "Europe/Paris"\n')
    port = _free_port()
    env = {
        **os.environ,
        "KOBAN_OPTIONS_TENANTS_FILE": str(tenants),
        "KOBAN_OPTIONS_REDIS_URL": redis_url,
        f"KOBAN_OPTIONS_TENANTS__{tenant.upper()}__API_TOKENS": json.dumps(
            [{"token": TOKEN, "scopes": ["read"]}]
        ),
    }
    env.pop("REDIS_URL", None)
    cmd = [sys.executable, "-m", "service.entrypoints.cli", "api", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}", tenant
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _fresh_get(url: str) -> tuple[int, str]:
    """(status, body); urllib opens a new connection each time, so the kernel spreads the
    requests over both workers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_with_two_workers_sum_both_whichever_answers(two_workers: tuple[str, str]) -> None:
    base, tenant = two_workers
    deadline = time.monotonic() + 60
    while True:  # both workers up: a scrape shows each one's process figures
        try:
            if _workers_seen(_fresh_get(f"{base}/metrics")[1]) == {"0", "1"}:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the two workers did not both come up")
        time.sleep(0.2)
    route = "/v1/tenants/{tenant}/lots"
    before = _requests_to(_fresh_get(f"{base}/metrics")[1], route)
    sent = 40
    for _ in range(sent):
        status, _ = _fresh_get(f"{base}/v1/tenants/{tenant}/lots?limit=1")
        assert status == 401  # no token: counted all the same
    for _ in range(6):  # every scrape, whichever worker takes it, counts all of them
        text = _fresh_get(f"{base}/metrics")[1]
        assert _requests_to(text, route) - before == sent
        assert _workers_seen(text) == {"0", "1"}
        assert "python_gc_collections_total" in text


def _exposition(requests: int, memory: int, active: int) -> str:
    """One worker's own figures, as prometheus_client writes them."""
    r = CollectorRegistry()
    c = Counter("koban_options_http_requests", "Requests.", ["route"], registry=r)
    c.labels(route="/x").inc(requests)
    Gauge("process_resident_memory_bytes", "Memory.", registry=r).set(memory)
    Gauge("koban_options_active_options", "Active.", ["tenant"], registry=r).labels("t").set(active)
    return generate_latest(r).decode()


def test_merge_sums_counters_labels_process_figures_and_keeps_redis_gauges() -> None:
    text = merge([(0, _exposition(3, 100, 7)), (1, _exposition(4, 200, 7))], own=1).decode()
    assert _requests_to(text, "/x") == 7
    assert 'process_resident_memory_bytes{worker="0"} 100.0' in text
    assert 'process_resident_memory_bytes{worker="1"} 200.0' in text
    assert 'koban_options_active_options{tenant="t"} 7.0' in text
    assert text.count("koban_options_active_options{") == 1
    assert "_created" not in text.split("koban_options_http_requests_total")[1].split("#")[0]
