"""Shared fixtures: a real redis-server of our own (or REDIS_URL), a fresh tenant per test.

Tests never flush a database: each test gets its own tenant name and deletes only the keys
under that tenant's hash tag, so REDIS_URL may point at a shared server.

Tests marked ``cluster`` run twice: on that server and on a local Redis Cluster of three
masters (`redis_cluster`, tests/support/redis_cluster.py), through `redis_backend` (``redis``,
``tenant`` and ``backend_url`` follow it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis as redis_sync

from service.storage.keys import TenantKeys
from service.storage.redis_client import RedisClient, connect
from service.storage.store import LotStore
from statecharts.model import Rules
from statecharts.ticks import parse_duration
from tests.support.redis_cluster import (
    ClusterUnsupported,
    LocalCluster,
    cluster_support,
    server_command,
    start_redis_cluster,
    sync_nodes,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis_server(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port; returns the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run .ci/ensure-redis or set REDIS_URL")
    for _ in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            server_command(binary, port, directory, *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis_sync.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                client.close()
                return proc, f"redis://127.0.0.1:{port}/0"
            except redis_sync.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError("could not start redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local Redis Cluster of three masters (tests/support/redis_cluster.py), started on first use
    and shared by the session; skipped, with the reason, where it cannot run."""
    reason = cluster_support()
    if reason is not None:
        pytest.skip(reason)
    try:
        cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    except ClusterUnsupported as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


BACKENDS = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``cluster`` (a module's ``pytestmark``, say) run once per backend: the
    single redis-server and the local Redis Cluster (``redis``, ``tenant`` and
    ``backend_url`` follow the ``redis_backend`` parameter)."""
    if "redis_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "cluster"
    ):
        metafunc.parametrize("redis_backend", BACKENDS, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``pytest.mark.cluster(single_only={"store": "mux"})``: the cluster run leaves out the
    combinations with those parameters (a transport that serves one server only)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("cluster")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("redis_backend") == "cluster" and "redis_url" in getattr(
            item, "fixturenames", ()
        ):
            # It would write to the single server while `tenant` cleans up the cluster.
            raise pytest.UsageError(f"{item.nodeid}: a cluster test takes backend_url")
        only = marker.kwargs.get("single_only", {}) if marker is not None else {}
        if params.get("redis_backend") == "cluster" and any(
            params.get(name) == value for name, value in only.items()
        ):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """``single`` (the default) or ``cluster`` (tests marked ``cluster``, second run)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, redis_backend: str) -> str:
    """The URL of this test's backend: `redis_url`, or the local cluster's
    ``redis+cluster://`` URL."""
    if redis_backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def redis(backend_url: str) -> AsyncIterator[RedisClient]:
    client = connect(backend_url)
    yield client
    await client.aclose()


def delete_tenant_keys(url: str, tenant: str) -> None:
    pattern = TenantKeys(tenant).prefix + "*"
    for client in sync_nodes(url):  # every master of a cluster, or the one server
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            client.delete(*batch[i : i + 1000])
        client.close()


@pytest.fixture
def tenant(backend_url: str) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    delete_tenant_keys(backend_url, name)


PARIS = ZoneInfo("Europe/Paris")


def make_rules(**overrides: object) -> Rules:
    values: dict[str, object] = {"zone": PARIS, "option_lifetime": parse_duration("P2D")}
    values.update(overrides)
    return Rules(**values)  # type: ignore[arg-type]


@pytest.fixture
def rules() -> Rules:
    return make_rules()


@pytest.fixture
def store(redis: RedisClient, tenant: str, rules: Rules) -> LotStore:
    return LotStore(redis, tenant, rules)
