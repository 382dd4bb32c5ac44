"""The scheduler's heartbeat (service-wide, with a TTL) and the reads of readiness: a ping,
the heartbeat and each tenant's latest processed tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from service.storage.keys import SCHEDULER_HEARTBEAT_KEY
from service.storage.redis_client import RedisClient

if TYPE_CHECKING:
    from service.storage.store import LotStore

__all__ = ["beat", "last_ticks", "ping", "read_heartbeat"]


async def beat(redis: RedisClient, now: float, ttl_s: int) -> None:
    """Record a scheduler's beat at `now` (UNIX seconds), forgotten after `ttl_s`."""
    await redis.set(SCHEDULER_HEARTBEAT_KEY, repr(now), ex=ttl_s)


async def read_heartbeat(redis: RedisClient) -> bytes | None:
    """The last beat as stored (UNIX seconds as text), None when no scheduler beats."""
    raw: Any = await redis.get(SCHEDULER_HEARTBEAT_KEY)
    return raw if raw is None or isinstance(raw, bytes) else str(raw).encode()


async def last_ticks(redis: RedisClient, stores: Sequence[LotStore]) -> list[Any]:
    """Each store's latest processed tick as stored (None before the first), in one
    pipeline (one slot per tenant)."""
    async with redis.pipeline(transaction=False) as pipe:
        for store in stores:
            pipe.get(store.keys.ticked)
        return list(await pipe.execute())


async def ping(redis: RedisClient) -> None:
    await redis.ping()
