"""The one way the service connects to Redis.

redis-py's asyncio connection packs commands in pure Python (~7 µs for a five-argument
XADD); hiredis packs the same in ~0.7 µs. The sweep sends tens of thousands of arguments
per tick, so every client made here packs with hiredis (exactly as redis-py's own sync
`HiredisRespSerializer` does).

Every client has a *blocking* pool of `MAX_CONNECTIONS`: a command that finds them all in
use waits (up to `POOL_TIMEOUT_S`, then ``ConnectionError`` → 503 ``STORE_UNAVAILABLE``) for
one to come back. redis-py's default pool raises ``MaxConnectionsError`` at once instead:
200 concurrent placements on one API process got 503s while Redis sat idle.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError


class HiredisPackConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        try:
            return [hiredis.pack_command(args)]
        except TypeError as e:
            raise DataError(f"invalid argument in {args[0]!r}: {e}") from e


MAX_CONNECTIONS = 100  # redis-py's default pool size, now waited for rather than refused
POOL_TIMEOUT_S = 10.0


def connect(url: str, **kwargs: Any) -> Redis:
    """A client for `url` with its own blocking pool (``max_connections``, ``timeout`` for a
    free connection; other keywords are connection options); plain TCP connections pack
    with hiredis (TLS keeps its own)."""
    if url.startswith("redis://") and "connection_class" not in kwargs:
        kwargs["connection_class"] = HiredisPackConnection
    kwargs.setdefault("max_connections", MAX_CONNECTIONS)
    kwargs.setdefault("timeout", POOL_TIMEOUT_S)
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **kwargs))


def sibling(redis: Redis, max_connections: int) -> Redis:
    """A client of the same server, database and credentials as `redis` with a pool of its
    own: for work that holds connections long (blocking stream reads), so it never takes
    the connections the writes need."""
    pool = redis.connection_pool
    kwargs = dict(pool.connection_kwargs)
    return Redis.from_pool(
        BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=max_connections,
            timeout=POOL_TIMEOUT_S,
            **kwargs,
        )
    )
