"""A Redis lease: one holder at a time for a piece of work, lapsing when its holder dies.

``SET key token NX PX ttl`` takes it; renewing and releasing check the token in one
script, so a holder whose lease lapsed (and was taken by another) can neither extend nor
drop the new holder's. TTLs are real time (Redis' own clock), never a tenant's test clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from service.storage.redis_client import RedisClient

__all__ = ["Lease"]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A lease on `key`, `ttl_ms` long, renewed by `kept()` every third of its TTL."""

    def __init__(self, redis: RedisClient, key: str, ttl_ms: int, token: str | None = None) -> None:
        if ttl_ms < 3:
            raise ValueError("a lease needs a TTL of a few milliseconds at least")
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = token or uuid.uuid4().hex

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        return bool(await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> bool:
        return bool(await self.redis.eval(_RELEASE, 1, self.key, self.token))

    async def holder(self) -> str | None:
        raw = await self.redis.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Renew the (acquired) lease in the background while the block runs; release it
        at the end. A renewal that fails (Redis away) is retried at the next period."""

        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                with contextlib.suppress(Exception):
                    await self.renew()

        task = asyncio.create_task(renew_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self.release()
