"""Hot-path Redis reads over one shared connection ("auto-pipelining").

Commands issued during one iteration of the event loop leave in one write; Redis answers
in order and each caller's future gets its own replies. Concurrent requests share writes,
reads and wake-ups, which redis-py's per-command pool, retry and timeout wrappers do not
(docs/benchmarks.md). Only commands whose resending is harmless go through here
(idempotent reads, the store's revision-guarded commit): after a lost connection a command
is sent once more. Errors are redis-py's (``LOADING`` is `BusyLoadingError`, so the API
answers 503); replies are RESP2 as hiredis parses them. See docs/semantics.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.storage.redis_client import RedisClient

__all__ = ["Command", "MuxReader"]

Command = tuple[str | bytes | int | float, ...]

# What this reader is for: reads, resent freely after a lost connection. Scripts go
# through `evalsha` (only scripts safe to send twice); every other command stays with
# redis-py, whose transactions and retries it would bypass.
READS = frozenset({"GET", "MGET", "HGET", "HMGET", "EXISTS", "ZSCORE", "ZCARD"})
# The same names as a command may spell them, checked without decoding (a read per request).
_READ_HEADS = frozenset(
    form for name in READS for form in (name, name.lower(), name.encode(), name.lower().encode())
)
# Idle connections are probed so a peer gone silently (a NAT or load balancer dropping
# the flow) is noticed before the next request waits for the timeout.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 3


def _keep_alive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _name(command: Command) -> str:
    head = command[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[list[Any]]
    count: int
    deadline: float
    replies: list[Any] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    """One connection: queued commands, flushed once per loop iteration; FIFO replies."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._parser = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[_Waiter] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)
        self._flush()  # what was asked before the transport was ours, if anything

    def request(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        if self.lost is not None:
            raise RedisConnectionError(str(self.lost))
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        deadline = self._loop.time() + self._timeout if self._timeout is not None else 0.0
        self._waiting.append(_Waiter(future, len(commands), deadline))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.extend(hiredis.pack_command(cast(Any, c)) for c in commands)
        if self._timeout is not None and self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        if self.lost is None:
            if self._transport is None:
                return  # connection_made sends it
            if self._out:
                self._transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                waiter = self._waiting[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.count:
                    self._waiting.popleft()
                    if not waiter.future.done():  # a cancelled caller's replies are dropped
                        waiter.future.set_result(waiter.replies)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(RedisConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        head = self._waiting[0].deadline
        if head <= self._loop.time():
            self.fail(RedisTimeoutError(f"No answer from Redis within {self._timeout} s"))
        else:
            self._timer = self._loop.call_at(head, self._check_deadline)

    def fail(self, error: BaseException) -> None:
        """Fail every waiting caller with `error` and drop the connection."""
        if self.lost is None:
            self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def close(self) -> None:
        self.fail(RedisConnectionError("Connection to Redis closed"))


class MuxReader:
    """Idempotent Redis reads through one lazily opened, shared connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        path: str | None = None,
        timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.tls = tls
        self.db, self.username, self.password = db, username, password
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    @classmethod
    def for_client(cls, redis: RedisClient) -> MuxReader | None:
        """A reader of the server, database, credentials and TLS settings `redis` uses; None
        for a client without one pool of one server (a Redis Cluster client, whose reads
        stay with redis-py, routed to each key's master)."""
        pool = getattr(redis, "connection_pool", None)
        if pool is None:
            return None
        kw = pool.connection_kwargs
        unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        tls = None
        if issubclass(pool.connection_class, SSLConnection):
            # The context redis-py would use: same certificates, checks and versions.
            tls = pool.connection_class(**kw).ssl_context.get()
        return cls(
            str(kw.get("host", "127.0.0.1")),
            int(kw.get("port", 6379)),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            path=str(kw["path"]) if unix else None,
            timeout=kw.get("socket_timeout", 5.0),
            connect_timeout=kw.get("socket_connect_timeout", 5.0),
            tls=tls,
        )

    def execute(self, *commands: Command) -> Coroutine[Any, Any, list[Any]]:
        """The replies to the read `commands` (sent together, in order); see the module
        doc. Anything but the reads it was built for is refused before it is sent (when
        called). Not a coroutine itself: the send's is returned, one frame less per read."""
        for command in commands:
            if command[0] not in _READ_HEADS and _name(command) not in READS:
                raise ValueError(f"MuxReader sends reads only, not {_name(command)}")
        return self._send(commands)

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        for attempt in (1, 2):
            protocol = await self._connected()
            try:
                replies = await protocol.request(commands)
            except RedisTimeoutError:
                raise
            except RedisConnectionError:
                if attempt == 2:
                    raise
                continue
            for reply in replies:
                if isinstance(reply, ResponseError):
                    if str(reply).startswith("LOADING"):
                        raise BusyLoadingError(str(reply))  # the API's 503, not a 500
                    raise reply
            return replies
        raise AssertionError("unreachable")  # pragma: no cover

    async def evalsha(self, sha: str, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The reply of the script `script` (SHA-1 `sha`) run on `keys` and `args`: EVALSHA,
        or EVAL when the server's script cache lost it (NOSCRIPT), which caches it again.
        Only for scripts that may safely be sent twice (see the module doc)."""
        try:
            (reply,) = await self._send([("EVALSHA", sha, len(keys), *keys, *args)])
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            (reply,) = await self._send([("EVAL", script, len(keys), *keys, *args)])
        return reply

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        where = self.path or f"{self.host}:{self.port}"

        def make() -> _Protocol:
            return _Protocol(loop, self.timeout)

        try:
            if self.path is not None:
                opening = loop.create_unix_connection(make, self.path)
            else:
                opening = loop.create_connection(make, self.host, self.port, ssl=self.tls)
            transport, protocol = await asyncio.wait_for(opening, self.connect_timeout)
            _keep_alive(transport)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise RedisConnectionError(f"Cannot connect to Redis at {where}: {exc!r}") from exc
        setup: list[Command] = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else None
            setup.append(auth or ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            try:
                replies = await protocol.request(setup)
            except RedisConnectionError:
                protocol.close()
                raise
            errors = [r for r in replies if isinstance(r, ResponseError)]
            if errors:
                protocol.close()
                raise RedisConnectionError(f"Redis at {where} refused the set-up: {errors[0]}")
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        """Close the connection (the next `execute` opens a new one)."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            protocol: _Protocol | None = None
            with contextlib.suppress(asyncio.CancelledError, Exception):
                protocol = await task  # cancelled or failed: nothing is open
            if protocol is not None:
                protocol.close()
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
