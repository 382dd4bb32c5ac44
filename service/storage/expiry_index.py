"""The expiry index (``extcode/option_id`` scored by effective expiry): its reads and the
expiring-notice cursor for the notice run; the sweep's repairs of entries that outside
tampering left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from redis.exceptions import WatchError

from service.storage.codec import decode_lot
from service.storage.keys import glob_escape
from service.storage.monotonic import raise_to, read_int
from service.storage.store import LotStore, view

__all__ = [
    "active_counts",
    "drop_entries",
    "lots_expiring_at",
    "next_expiry",
    "notice_cursor",
    "raise_notice_cursor",
    "repair_lot_entries",
]


async def next_expiry(store: LotStore, after: int, upto: int) -> int | None:
    """The first effective expiry in (`after`, `upto`] held by some option; None if none."""
    first = await store.redis.zrangebyscore(
        store.keys.expiries, f"({after}", upto, start=0, num=1, withscores=True
    )
    return int(first[0][1]) if first else None


async def lots_expiring_at(store: LotStore, expiry: int) -> tuple[int, list[str]]:
    """How many options expire exactly at `expiry`, and their lots (in index order, once
    each). Read at once, so an entry removed meanwhile cannot make a page skip another."""
    members = cast(
        list[bytes], await store.redis.zrangebyscore(store.keys.expiries, expiry, expiry)
    )
    codes = list(dict.fromkeys(m.rsplit(b"/", 1)[0].decode() for m in members))
    return len(members), codes


async def notice_cursor(store: LotStore) -> int | None:
    """Up to where expiring notices were given (None before the first run)."""
    return await read_int(store.redis, store.keys.notice_cursor)


async def raise_notice_cursor(store: LotStore, value: int) -> None:
    """Move the notice cursor to `value` unless it is already further."""
    await raise_to(store.redis, store.keys.notice_cursor, value)


async def active_counts(stores: Mapping[str, LotStore]) -> dict[str, int]:
    """How many options each tenant holds (the size of its expiry index), one pipeline
    per Redis client."""
    by_client: dict[int, list[str]] = {}
    for name, store in stores.items():
        by_client.setdefault(id(store.redis), []).append(name)
    out: dict[str, int] = {}
    for names in by_client.values():
        async with stores[names[0]].redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(stores[name].keys.expiries)
            counts = await pipe.execute()
        for name, count in zip(names, counts, strict=True):
            out[name] = int(count)
    return out


async def drop_entries(store: LotStore, members: list[bytes]) -> None:
    """Remove index entries that name no lot (only outside tampering writes those)."""
    await store.redis.zrem(store.keys.expiries, *members)


async def repair_lot_entries(store: LotStore, code: str) -> bool:
    """Make the expiry index say exactly what the lot holds (or drop a vanished lot's).

    Only outside tampering makes them disagree (index entries <= tick for options not due,
    or for a lot that does not exist); the sweep rewrites the lot's entries rather than
    spin on them. Done under WATCH of the lot, so a concurrent write is never undone.
    Returns whether anything had to change.
    """
    keys = store.keys
    prefix = code.encode() + b"/"
    for _ in range(store.max_attempts):
        pipe: Any
        async with store.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.lot(code))
            raw = cast(bytes | None, await pipe.get(keys.lot(code)))
            mine = {
                m: s
                async for m, s in store.redis.zscan_iter(
                    keys.expiries, match=glob_escape(code) + "/*"
                )
                if m.startswith(prefix) and b"/" not in m[len(prefix) :]
            }
            want = {} if raw is None else view(decode_lot(code, raw)).expiries
            if mine == {m.encode(): float(s) for m, s in want.items()}:
                await pipe.reset()
                return False
            pipe.multi()
            if mine:
                pipe.zrem(keys.expiries, *mine)
            if want:
                pipe.zadd(keys.expiries, want)
            try:
                await pipe.execute()
                return True
            except WatchError:
                continue
    return False
