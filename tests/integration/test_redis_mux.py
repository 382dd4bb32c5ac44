"""`MuxReader`: the same answers as redis-py for the reads it serves, each concurrent caller
its own replies (cancelled callers included), Redis errors raised, scripts run (and sent
again when the server's script cache lost them), a lost connection replaced, an
unreachable or silent server reported as the redis-py errors the API maps to 503, and the
client's database and password followed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.keys import TenantKeys
from service.storage.redis_client import connect
from service.storage.redis_mux import MuxReader
from tests.support.redis_server import free_port, start_redis_server


@pytest.fixture
async def mux(redis: Redis) -> AsyncIterator[MuxReader]:
    reader = MuxReader.for_client(redis)
    assert reader is not None
    yield reader
    await reader.aclose()


async def test_answers_like_redis_py(redis: Redis, tenant: str, mux: MuxReader) -> None:
    keys = TenantKeys(tenant)
    await redis.set(keys.lot("L1"), b'3|{"c":"free"}')
    await redis.hset(keys.counts, mapping={"u:api": 4, "p:x": 1})
    await redis.zadd(keys.lots, {"L1": 5})
    (raw, missing, counts, card) = await mux.execute(
        ("GET", keys.lot("L1")),
        ("GET", keys.lot("NOPE")),
        ("HMGET", keys.counts, "u:api", "p:x", "p:y"),
        ("ZCARD", keys.lots),
    )
    assert raw == await redis.get(keys.lot("L1")) == b'3|{"c":"free"}'
    assert missing is None
    assert counts == await redis.hmget(keys.counts, ["u:api", "p:x", "p:y"]) == [b"4", b"1", None]
    assert card == 1


async def test_concurrent_callers_get_their_own_replies(
    redis: Redis, tenant: str, mux: MuxReader
) -> None:
    keys = TenantKeys(tenant)
    await redis.mset({keys.lot(f"L{i}"): f"v{i}" for i in range(300)})

    async def read(i: int) -> bytes:
        (value,) = await mux.execute(("GET", keys.lot(f"L{i}")))
        return value  # type: ignore[no-any-return]

    slow = [asyncio.create_task(read(i)) for i in range(0, 300, 7)]
    await asyncio.sleep(0)
    for task in slow[::2]:
        task.cancel()  # their replies still arrive and must not shift the others'
    answers = await asyncio.gather(*(read(i) for i in range(300)))
    assert answers == [f"v{i}".encode() for i in range(300)]
    for i, task in zip(range(0, 300, 7), slow, strict=True):
        if not task.cancelled():
            assert await task == f"v{i}".encode()
    assert await read(5) == b"v5"


async def test_error_replies_raise(redis: Redis, tenant: str, mux: MuxReader) -> None:
    keys = TenantKeys(tenant)
    await redis.hset(keys.counts, mapping={"a": 1})
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await mux.execute(("GET", keys.counts))
    assert await mux.execute(("HGET", keys.counts, "a")) == [b"1"]


async def test_a_lost_connection_is_replaced(tmp_path: Path) -> None:
    proc, url = start_redis_server(tmp_path)
    admin = connect(url)
    reader = MuxReader.for_client(admin)
    assert reader is not None
    try:
        await admin.set("k", "v")
        assert await reader.execute(("GET", "k")) == [b"v"]
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await reader.execute(("GET", "k")) == [b"v"]
    finally:
        await reader.aclose()
        await admin.aclose()
        proc.terminate()
        proc.wait(10)
    with pytest.raises(RedisConnectionError):
        await reader.execute(("GET", "k"))  # the server is gone
    await reader.aclose()


async def test_scripts_run_and_survive_a_flushed_script_cache(tmp_path: Path) -> None:
    proc, url = start_redis_server(tmp_path)
    admin = connect(url)
    reader = MuxReader.for_client(admin)
    assert reader is not None
    body = "redis.call('SET', KEYS[1], ARGV[1]); return {'ok', tonumber(ARGV[2])}"
    script = admin.register_script(body)
    try:
        assert await reader.evalsha(script.sha, body, ["k"], ["v1", 7]) == [b"ok", 7]
        assert await admin.get("k") == b"v1"
        await admin.script_flush()  # the server forgot it: EVAL sends it (and caches it)
        assert await reader.evalsha(script.sha, body, ["k"], ["v2", 8]) == [b"ok", 8]
        assert await admin.script_exists(script.sha) == [True]
        assert await reader.evalsha(script.sha, body, ["k"], ["v3", 9]) == [b"ok", 9]
        assert await admin.get("k") == b"v3"
        broken = "return redis.call('NOPE')"
        with pytest.raises(ResponseError, match="Unknown Redis command"):
            await reader.evalsha(admin.register_script(broken).sha, broken, [], [])
    finally:
        await reader.aclose()
        await admin.aclose()
        proc.terminate()
        proc.wait(10)


async def test_an_unreachable_server_is_a_connection_error() -> None:
    reader = MuxReader("127.0.0.1", free_port(), timeout=1.0, connect_timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await reader.execute(("GET", "k"))
    await reader.aclose()


async def test_a_silent_server_times_out() -> None:
    ended = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        ended.set()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mux = MuxReader("127.0.0.1", port, timeout=0.2)
    try:
        with pytest.raises(RedisTimeoutError):
            await mux.execute(("GET", "k"))
    finally:
        await mux.aclose()
        await asyncio.wait_for(ended.wait(), 5)
        server.close()
        await server.wait_closed()


async def test_follows_the_clients_database_and_password(tmp_path: Path) -> None:
    proc, url = start_redis_server(tmp_path)
    port = url.rsplit(":", 1)[1].split("/")[0]
    admin = connect(url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    client = connect(f"redis://:s3cret@127.0.0.1:{port}/3")
    wrong = connect(f"redis://:nope@127.0.0.1:{port}/3")
    reader, refused = MuxReader.for_client(client), MuxReader.for_client(wrong)
    assert reader is not None and refused is not None
    try:
        await client.set("k", "in-db-3")
        assert await reader.execute(("GET", "k")) == [b"in-db-3"]
        with pytest.raises(RedisConnectionError):
            await refused.execute(("GET", "k"))
    finally:
        await reader.aclose()
        await refused.aclose()
        await client.aclose()
        await wrong.aclose()
        proc.terminate()
        proc.wait(10)


def test_takes_a_transport_of_another_event_loop_even_when_handed_late() -> None:
    """uvloop's transports do not derive from `asyncio.Transport`, and uvloop calls
    `connection_made` after the connection is returned: the reader once refused such a
    transport (an assertion inside the loop's callback) and dropped what was asked before
    it came, so every read waited for its timeout (found by running the bench under uvloop)."""
    from service.storage.redis_mux import _Protocol

    class OtherLoopsTransport:  # duck-typed, as uvloop's TCPTransport
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(data)

        def close(self) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        protocol = _Protocol(loop, None)
        early = protocol.request([("PING",)])  # asked before the transport is there
        protocol._flush()  # the flush call_soon scheduled: nothing to write to yet
        transport = OtherLoopsTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        assert transport.sent == [b"*1\r\n$4\r\nPING\r\n"]
        later = protocol.request([("ECHO", "x")])
        protocol._flush()
        assert transport.sent[1:] == [b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n"]
        protocol.data_received(b"+PONG\r\n$1\r\nx\r\n")
        assert early.result() == [b"PONG"] and later.result() == [b"x"]
    finally:
        loop.close()
