"""Shared fixtures: a real redis-server of our own (or REDIS_URL), a fresh tenant per test.

Tests never flush a database: each test gets its own tenant name and deletes only the keys
under that tenant's hash tag, so REDIS_URL may point at a shared server.
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
from redis.asyncio import Redis

from service.keys import TenantKeys
from service.redis_client import connect
from service.store import LotStore
from statecharts.model import Rules
from statecharts.ticks import parse_duration


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
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--protected-mode",
                "no",
                *extra,
            ],
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


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


def delete_tenant_keys(url: str, tenant: str) -> None:
    client = redis_sync.Redis.from_url(url)
    pattern = TenantKeys(tenant).prefix + "*"
    batch = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(batch), 1000):
        client.delete(*batch[i : i + 1000])
    client.close()


@pytest.fixture
def tenant(redis_url: str) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    delete_tenant_keys(redis_url, name)


PARIS = ZoneInfo("Europe/Paris")


def make_rules(**overrides: object) -> Rules:
    values: dict[str, object] = {"zone": PARIS, "option_lifetime": parse_duration("P2D")}
    values.update(overrides)
    return Rules(**values)  # type: ignore[arg-type]


@pytest.fixture
def rules() -> Rules:
    return make_rules()


@pytest.fixture
def store(redis: Redis, tenant: str, rules: Rules) -> LotStore:
    return LotStore(redis, tenant, rules)
