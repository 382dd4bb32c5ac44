"""The sweep's own line to Redis: one connection, commands sent ahead, replies read in order.

The sweep (service/usecases/sweep.py) keeps several commands in flight — the expiry index
window, chunks' reads, script calls — so Redis applies one chunk while Python decides the
next. This channel sends them packed and hands each reply back with what it answers; the
sweep decides what to do with it. `sweep.lua` is loaded once per client and again when a
server lost it (restart, flush): the call it refused is then handed back as `RELOADED`.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

from service.storage.redis_client import own_connection
from service.storage.resp import pack
from service.storage.store import LotStore
from service.storage.sweep_script import LUA_SWEEP, SWEEP_SHA, Plan, apply_command

# Clients whose server was handed the sweep's script: it is loaded once per client, not
# at every tick; a server that lost it since answers NOSCRIPT and gets it again then.
_LOADED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

RANGE, READ, APPLY = "range", "read", "apply"
RELOADED = "reloaded"  # an apply Redis refused for want of the script, loaded since


class SweepChannel:
    """Commands out, replies back in order, each with what it answers: ``(RANGE, None)``,
    ``(READ, codes)``, ``(APPLY, plans)``. Keeps the seconds spent sending, waiting for
    reads and waiting for script calls."""

    def __init__(self, store: LotStore, conn: AbstractConnection, sha: str) -> None:
        self.store = store
        self.conn = conn
        self.sha = sha
        self.expected: deque[tuple[str, Any]] = deque()
        self.send_s = 0.0
        self.reads_s = 0.0
        self.script_s = 0.0

    @property
    def in_flight(self) -> bool:
        return bool(self.expected)

    async def _send(self, kind: str, what: Any, command: bytes) -> None:
        started = time.perf_counter()
        await self.conn.send_packed_command(command, check_health=False)
        self.send_s += time.perf_counter() - started
        self.expected.append((kind, what))

    async def send_range(self, tick: int, window: int) -> None:
        """The next index entries due at or before `tick`, at most `window`."""
        expiries = self.store.keys.expiries
        command = pack(["ZRANGEBYSCORE", expiries, "-inf", tick, "LIMIT", 0, window])
        await self._send(RANGE, None, command)

    async def send_read(self, codes: list[str]) -> None:
        """The chunk's lots and their histories, in one MGET (the lots first)."""
        k = self.store.keys
        lot_key, history_key = k.lot_prefix, k.history_prefix
        keys = [lot_key + c for c in codes] + [history_key + c for c in codes]
        await self._send(READ, codes, pack(["MGET", *keys]))

    def apply_command(self, tick: int, plans: list[Plan]) -> bytes:
        """The script call applying `plans`, packed (sweep_script.apply_command)."""
        store = self.store
        return apply_command(store.keys, store.cluster, self.sha, tick, plans)

    async def send_apply(self, plans: list[Plan], command: bytes) -> None:
        await self._send(APPLY, plans, command)

    async def read(self) -> tuple[str, Any, Any]:
        """The next reply: ``(kind, what, reply)``; ``(RELOADED, plans, None)`` when an
        apply found the script gone (it is loaded again: send the apply again)."""
        kind, what = self.expected.popleft()
        waited = time.perf_counter()
        try:
            reply = await self.conn.read_response()
        except NoScriptError:
            if kind != APPLY:
                raise
            self.sha = await self.store.redis.script_load(LUA_SWEEP)
            return RELOADED, what, None
        waited = time.perf_counter() - waited
        if kind == APPLY:
            self.script_s += waited
        else:
            self.reads_s += waited
        return kind, what, reply


@asynccontextmanager
async def sweep_channel(store: LotStore) -> AsyncIterator[SweepChannel]:
    """A channel on the tenant's server (on a cluster, the master of its slot); its
    connection is disconnected rather than reused if we leave with replies unread."""
    sha = SWEEP_SHA
    if not _LOADED.get(store.redis):
        sha = await store.redis.script_load(LUA_SWEEP)
        _LOADED[store.redis] = True
    async with own_connection(store.redis, store.keys.expiries) as conn:
        yield SweepChannel(store, conn, sha)
