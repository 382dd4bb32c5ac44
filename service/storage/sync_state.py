"""What the stock sync and the reconciler keep in Redis besides the lots.

- the reconciliation queue (`TenantKeys.needs_sync`, a set of extcodes);
- the start time of the last successful stock sync (`TenantKeys.last_sync`);
- whether a Koban write of ours holds a lot's write lease (`TenantKeys.lot_writes`).
"""

from __future__ import annotations

from typing import cast

from service.storage.codec import decode_lot
from service.storage.store import LotStore
from statecharts.model import Lot

__all__ = [
    "expiring_sample",
    "last_sync",
    "load_lots",
    "lot_exists",
    "lot_write_in_flight",
    "mark_needs_sync",
    "needs_sync",
    "queued_sample",
    "set_last_sync",
    "unmark_needs_sync",
]


def _text(member: object) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


async def mark_needs_sync(store: LotStore, *extcodes: str) -> None:
    """Queue lots for the reconciler."""
    if extcodes:
        await store.redis.sadd(store.keys.needs_sync, *extcodes)


async def unmark_needs_sync(store: LotStore, extcode: str) -> None:
    await store.redis.srem(store.keys.needs_sync, extcode)


async def needs_sync(store: LotStore) -> set[str]:
    """Every lot queued for the reconciler."""
    raw = await store.redis.smembers(store.keys.needs_sync)
    return {_text(m) for m in raw}


async def queued_sample(store: LotStore, count: int) -> list[str]:
    """Up to `count` distinct queued lots, at random."""
    raw = await store.redis.srandmember(store.keys.needs_sync, count)
    return [_text(m) for m in raw or []]


async def expiring_sample(store: LotStore, count: int) -> list[str]:
    """The extcodes of up to `count` random options due to expire (a lot may repeat)."""
    raw = await store.redis.zrandmember(store.keys.expiries, count)
    return [_text(m).rsplit("/", 1)[0] for m in raw or []]


async def load_lots(store: LotStore, extcodes: list[str]) -> dict[str, Lot]:
    """The stored lots among `extcodes` (no lazy expiry), in one read."""
    if not extcodes:
        return {}
    raws = await store.redis.mget([store.keys.lot(code) for code in extcodes])
    return {
        code: decode_lot(code, cast(bytes, raw))
        for code, raw in zip(extcodes, raws, strict=True)
        if raw
    }


async def lot_exists(store: LotStore, extcode: str) -> bool:
    return bool(await store.redis.exists(store.keys.lot(extcode)))


async def last_sync(store: LotStore) -> int | None:
    """Start time (UNIX s) of the last successful stock sync; None before the first."""
    raw = cast(bytes | None, await store.redis.get(store.keys.last_sync))
    return None if raw is None else int(raw)


async def set_last_sync(store: LotStore, started: int) -> None:
    await store.redis.set(store.keys.last_sync, str(started))


async def lot_write_in_flight(store: LotStore, extcode: str) -> bool:
    """Whether a Prolong/Undo/Preresv/Desist of ours holds the lot's write lease."""
    return bool(await store.redis.exists(store.keys.lot_writes(extcode)))


async def queued_count(store: LotStore) -> int:
    """How many lots wait for a reconciliation with Koban (drift or an unknown outcome)."""
    return int(await store.redis.scard(store.keys.needs_sync))
