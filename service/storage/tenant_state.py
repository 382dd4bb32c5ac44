"""Small per-tenant values besides the lots: the latest processed tick, the sandbox test
clock's offset, the last stock sync run's summary. Monotonic ones only ever grow.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from service.storage.monotonic import raise_to, read_int
from service.storage.store import LotStore

__all__ = [
    "clock_offset",
    "count_due",
    "last_tick",
    "load_sync_run",
    "raise_clock_offset",
    "raise_last_tick",
    "save_sync_run",
]


async def last_tick(store: LotStore) -> int | None:
    """The latest tick processed (None before the first)."""
    return await read_int(store.redis, store.keys.ticked)


async def raise_last_tick(store: LotStore, tick: int) -> None:
    await raise_to(store.redis, store.keys.ticked, tick)


async def count_due(store: LotStore, upto: int) -> int:
    """How many options expire at or before `upto`."""
    return int(await store.redis.zcount(store.keys.expiries, "-inf", upto))


async def clock_offset(store: LotStore) -> int | None:
    """A sandbox tenant's recorded test-clock offset (seconds)."""
    return await read_int(store.redis, store.keys.clock_offset)


async def raise_clock_offset(store: LotStore, wanted: int) -> int:
    """Record an offset of at least `wanted`; the offset now recorded (maybe larger)."""
    return await raise_to(store.redis, store.keys.clock_offset, wanted)


async def load_sync_run(store: LotStore) -> dict[str, Any] | None:
    """The last stock sync run's summary, as saved."""
    raw = cast(bytes | None, await store.redis.get(store.keys.sync_run))
    return None if raw is None else cast(dict[str, Any], orjson.loads(raw))


async def save_sync_run(store: LotStore, run: dict[str, Any]) -> None:
    await store.redis.set(store.keys.sync_run, orjson.dumps(run))
