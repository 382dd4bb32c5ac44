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

import structlog

from service.storage.redis_client import RedisClient

__all__ = ["Held", "Lease", "LeaseLost"]

log = structlog.get_logger("service.storage.lease")

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


class LeaseLost(Exception):
    """The holder's lease lapsed or was taken by another holder: stop, do not act on it."""


class Held:
    """What a holder of a kept lease can ask: whether the lease is still believed held.

    `ensure()` raises `LeaseLost` once the renewer found the lease gone (taken by another
    holder, or lapsed), or could not renew it for so long that it may lapse before the next
    attempt. A holder calls it right before an action the lease exists to serialize."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.lost_reason: str | None = None
        self.gone = asyncio.Event()  # set when the lease is found lost

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def ensure(self) -> None:
        if self.lost_reason is not None:
            raise LeaseLost(f"lease {self.key}: {self.lost_reason}")


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
    async def kept(self, *, cancel_on_loss: bool = True) -> AsyncIterator[Held]:
        """Renew the (acquired) lease in the background while the block runs; release it
        at the end.

        The lease is lost when a renewal finds another token (or none), or when renewals
        failed (Redis away) so long that it could lapse before the next attempt. Then the
        `Held` it yields is marked lost and, with `cancel_on_loss`, the block is cancelled
        and `LeaseLost` raised in its place; without, the holder checks `Held.ensure()`
        before each action the lease guards (a Koban call already sent cannot be undone
        by cancelling it)."""
        held = Held(self.key)
        holder = asyncio.current_task()
        loop = asyncio.get_running_loop()
        period = self.ttl_ms / 3000
        ttl_s = self.ttl_ms / 1000

        async def renew_forever() -> None:
            last_ok = loop.time()
            while True:
                await asyncio.sleep(period)
                try:
                    renewed: bool | None = await asyncio.wait_for(self.renew(), period)
                except Exception:  # Redis away or slow: retried while the lease may hold
                    renewed = None
                now = loop.time()
                if renewed:
                    last_ok = now
                    continue
                if renewed is False:
                    held.lost_reason = "taken by another holder or lapsed"
                elif now - last_ok + period >= ttl_s:
                    held.lost_reason = "not renewed in time (Redis unreachable)"
                else:
                    continue
                held.gone.set()
                log.warning("lease_lost", key=self.key, reason=held.lost_reason)
                if cancel_on_loss and holder is not None:
                    holder.cancel()
                return

        task = asyncio.create_task(renew_forever())
        try:
            yield held
        except asyncio.CancelledError:
            if not (cancel_on_loss and held.lost):
                raise
        else:
            if not (cancel_on_loss and held.lost):
                return
            # The block ended before our cancellation reached it: take it here, so it
            # does not surface at the holder's next await.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not held.lost:
                with contextlib.suppress(Exception):
                    await self.release()
        if holder is not None and holder.cancelling():
            holder.uncancel()
        raise LeaseLost(f"lease {self.key}: {held.lost_reason}")
