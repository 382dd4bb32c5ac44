"""Reads of several lots at once, and of a lot with the option counts a request needs.

Stored values are returned raw: the callers decode them (and apply lazy expiry) as they
need; the availability route remembers answers by stored value.
"""

from __future__ import annotations

from typing import cast

from service.storage.keys import API_USER_FIELD, prospect_field, split_intent_member
from service.storage.redis_mux import MuxReader
from service.storage.store import LotStore

__all__ = ["intent_lots", "raw_lot_with_counts", "raw_lots"]


async def raw_lots(store: LotStore, extcodes: list[str]) -> list[bytes | None]:
    """The stored values of `extcodes`, in order (None for a lot that does not exist)."""
    if not extcodes:
        return []
    return cast(list[bytes | None], await store.redis.mget([store.keys.lot(c) for c in extcodes]))


async def raw_lot_with_counts(
    store: LotStore, extcode: str, via: MuxReader | None, third: str | None, counted: bool
) -> tuple[bytes | None, int, int]:
    """The lot's stored value, the API user's option count and `third`'s (both 0 unless
    `counted`), in one round trip (through `via` when given)."""
    key = store.keys.lot(extcode)
    if not counted:
        (raw,) = await store.run_reads(via, ("GET", key))
        return raw, 0, 0
    fields = [API_USER_FIELD] + ([prospect_field(third)] if third else [])
    raw, values = await store.run_reads(via, ("GET", key), ("HMGET", store.keys.counts, *fields))
    user = int(values[0] or 0)
    prospect = int(values[1] or 0) if third else 0
    return raw, user, prospect


async def intent_lots(store: LotStore) -> list[str]:
    """The lots holding a pending intent, sorted."""
    members = cast(list[bytes], await store.redis.zrange(store.keys.intents, 0, -1))
    return sorted({split_intent_member(m)[0] for m in members})
