"""The one way the service connects to Redis: a single server or a Redis Cluster.

`connect` gives every client a *blocking* pool (a command waits for a free connection
instead of failing at once) and, over plain TCP (``redis://``), packs commands with
hiredis (the sweep sends tens of thousands of arguments per tick). ``redis+cluster://``
gives a `RedisCluster`; every key of a tenant carries the hash tag ``{tenant}``, so each
command, pipeline and script goes to the one master of that slot. `RedisClient` is either
kind, told apart only where it must be: the sweep's `own_connection`, `MuxReader`, the
event stream's `blocking_client`. The reasons and the cluster's limits: docs/semantics.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import AskError, DataError, MovedError

RedisClient: TypeAlias = Redis | RedisCluster
"""What `connect` returns: a client of one server, or of a Redis Cluster."""

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


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


CLUSTER_MAX_CONNECTIONS = 1000  # per node (redis-py's cluster default is 100, then refused)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect(url: str, **kwargs: Any) -> RedisClient:
    """A client for `url` with its own blocking pool (``max_connections``, ``timeout`` for a
    free connection; other keywords are connection options); plain TCP connections pack
    with hiredis (TLS keeps its own). A ``redis+cluster://`` URL gives a cluster client
    (`connect_cluster`)."""
    if is_cluster_url(url):
        return connect_cluster(url, **kwargs)
    if url.startswith("redis://") and "connection_class" not in kwargs:
        kwargs["connection_class"] = HiredisPackConnection
    kwargs.setdefault("max_connections", MAX_CONNECTIONS)
    kwargs.setdefault("timeout", POOL_TIMEOUT_S)
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **kwargs))


def sibling(redis: RedisClient, max_connections: int) -> RedisClient:
    """A client of the same server, database and credentials as `redis` with a pool of its
    own: for work that holds connections long (blocking stream reads), so it never takes
    the connections the writes need. Of a cluster client: a cluster client of the same
    nodes and credentials, with `max_connections` per node."""
    if isinstance(redis, RedisCluster):
        return _cluster_sibling(redis, max_connections)
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


_SIBLING_KWARGS = (
    "username",
    "password",
    "credential_provider",
    "client_name",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "socket_read_size",
    "health_check_interval",
    "encoding",
    "encoding_errors",
    "decode_responses",
    "protocol",
)


def _cluster_sibling(redis: RedisCluster, max_connections: int) -> RedisCluster:
    kw: dict[str, Any] = dict(redis.get_connection_kwargs())
    keep = {k: kw[k] for k in _SIBLING_KWARGS if k in kw}
    if issubclass(kw.get("connection_class") or Connection, SSLConnection):
        keep["ssl"] = True
        keep.update({k: v for k, v in kw.items() if k.startswith("ssl_")})
    nodes = redis.get_nodes() or redis.startup_nodes
    return RedisCluster(
        startup_nodes=[ClusterNode(n.host, n.port) for n in nodes],
        max_connections=max_connections,
        **keep,
    )


def connect_cluster(url: str, **kwargs: Any) -> RedisCluster:
    """A `RedisCluster` seeded by the node(s) of a ``redis+cluster://`` URL (the client
    discovers the others and the slot map on first use; redis-py 8.1 routes that first
    command before loading the map, so a keyed one comes back MOVED once and is resent).
    ``timeout`` (the single-node pool's wait) has no counterpart and is dropped;
    ``max_connections`` is per node."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES[parts.scheme]
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {parts.path[1:]!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = [h.strip() for h in hosts.split(",") if h.strip()]
    if not seeds:
        raise ValueError("a redis+cluster:// URL names at least one host:port")
    kwargs.pop("timeout", None)
    kwargs.pop("connection_class", None)
    kwargs.setdefault("max_connections", CLUSTER_MAX_CONNECTIONS)
    first = urlunsplit(
        (scheme, (userinfo + "@" if userinfo else "") + seeds[0], "", parts.query, "")
    )
    nodes = []
    for seed in seeds[1:]:
        host, _, port = seed.rpartition(":")
        nodes.append(ClusterNode(host.strip("[]"), int(port or 6379)))
    if nodes:
        kwargs["startup_nodes"] = nodes
    return RedisCluster.from_url(first, **kwargs)


@asynccontextmanager
async def own_connection(client: RedisClient, key: str) -> AsyncIterator[AbstractConnection]:
    """A connection to the server holding `key` (on a cluster, the master of its slot),
    the caller's alone while inside: for raw commands pipelined on it (the sweep). Left by
    an exception, it is disconnected before going back (replies may be left unread); a
    cluster redirection (the slot moved) also refreshes the client's slot map, so the
    caller's next attempt goes to the new owner."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
        conn = node.acquire_connection()
        try:
            yield conn
        except (MovedError, AskError):
            await conn.disconnect()
            await client.nodes_manager.initialize()
            raise
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        return
    pool = client.connection_pool
    single = cast(AbstractConnection, await pool.get_connection())  # type: ignore[no-untyped-call]
    try:
        yield single
    except BaseException:
        await single.disconnect()
        raise
    finally:
        await pool.release(single)


@asynccontextmanager
async def blocking_client(client: RedisClient) -> AsyncIterator[RedisClient]:
    """A client for long blocking reads (``XREAD BLOCK``): of one server, a client holding a
    connection of its own from `client`'s pool (closed on leaving); of a cluster, `client`
    itself, whose every command takes a node connection for its own duration."""
    if isinstance(client, RedisCluster):
        # Slot map first: redis-py 8.1 routes a new cluster client's first command before
        # loading it (to any master: MOVED, then resent).
        await client.initialize()
        yield client
        return
    own = client.client()
    try:
        yield own
    finally:
        await own.aclose()
