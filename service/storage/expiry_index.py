"""Reads of the expiry index (``extcode/option_id`` scored by effective expiry) and of the
expiring-notice cursor, for the notice run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from service.storage.monotonic import raise_to, read_int
from service.storage.store import LotStore

__all__ = [
    "active_counts",
    "lots_expiring_at",
    "next_expiry",
    "notice_cursor",
    "raise_notice_cursor",
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
