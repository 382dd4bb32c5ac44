"""The fast reader over TLS, with keepalive on its socket, refusing what it is not for; and
the one start-up line when the API cannot use it (a Redis Cluster client)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from redis.asyncio import Redis

from service.entrypoints.api.context import TENANTS_KEY
from service.entrypoints.api.routes_lots import FAST_READS, install_fast_reads
from service.storage.redis_client import connect
from service.storage.redis_mux import MuxReader
from service.tenancy import Tenants
from tests.support.redis_server import free_port as _free_port
from tests.support.redis_server import start_redis_server


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_the_reader_follows_a_rediss_client_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = _free_port()
    proc, _plain = start_redis_server(
        tmp_path,
        *("--tls-port", str(tls_port), "--tls-cert-file", str(cert)),
        *("--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)),
        *("--tls-auth-clients", "no"),
    )
    client = connect(f"rediss://127.0.0.1:{tls_port}/2?ssl_ca_certs={cert}&ssl_cert_reqs=required")
    reader = MuxReader.for_client(client)
    try:
        assert reader is not None and reader.tls is not None
        await client.set("k", "over-tls")
        assert await reader.execute(("GET", "k")) == [b"over-tls"]
        assert reader._protocol is not None
        transport = reader._protocol._transport
        assert transport is not None and transport.get_extra_info("ssl_object") is not None
    finally:
        if reader is not None:
            await reader.aclose()
        await client.aclose()
        proc.terminate()
        proc.wait(10)


async def test_idle_connections_are_kept_alive(redis: Redis) -> None:
    reader = MuxReader.for_client(redis)
    assert reader is not None
    try:
        await reader.execute(("GET", "nothing"))
        assert reader._protocol is not None and reader._protocol._transport is not None
        sock = reader._protocol._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) > 0
    finally:
        await reader.aclose()


@pytest.mark.parametrize(
    "command",
    [("SET", "k", "v"), ("DEL", "k"), ("FLUSHALL",), ("EVAL", "return 1", 0), (b"set", "k", "v")],
)
async def test_the_reader_refuses_anything_but_its_reads_before_sending(
    redis: Redis, tenant: str, command: tuple[object, ...]
) -> None:
    reader = MuxReader.for_client(redis)
    assert reader is not None
    key = f"kol:{{{tenant}}}:canary"
    await redis.set(key, "kept")
    try:
        with pytest.raises(ValueError, match="reads only"):
            await reader.execute(("GET", key), command)  # type: ignore[arg-type]
        assert await redis.get(key) == b"kept"
        assert reader._protocol is None  # nothing was sent, not even the GET
    finally:
        await reader.aclose()


async def test_a_cluster_client_is_said_at_start_up_to_read_through_redis_py() -> None:
    class ClusterLike:  # no single connection pool, like redis-py's RedisCluster
        pass

    app = web.Application()
    app[TENANTS_KEY] = Tenants({})
    with structlog.testing.capture_logs() as logs:
        install_fast_reads(app, ClusterLike())  # type: ignore[arg-type]
    assert FAST_READS not in app
    assert [e["event"] for e in logs] == ["fast_reads_off"]
    assert "redis-py" in logs[0]["reason"]
