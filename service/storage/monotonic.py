"""Integers in Redis that only move forward: the last tick processed, the notice cursor, a
test clock's offset.

`raise_to` sets the key to the larger of its value and the candidate in one script, so
writers racing each other (several daemons, API and scheduler) can only ever move it
forward, and a late writer with an older value changes nothing.
"""

from __future__ import annotations

from service.storage.redis_client import RedisClient

__all__ = ["raise_to", "read_int"]

# KEYS[1] the integer; ARGV[1] a candidate. Returns the value now stored.
_RAISE = """
local current = redis.call('GET', KEYS[1])
local candidate = tonumber(ARGV[1])
if current == false or candidate > tonumber(current) then
  redis.call('SET', KEYS[1], ARGV[1])
  return candidate
end
return tonumber(current)
"""


async def raise_to(redis: RedisClient, key: str, value: int) -> int:
    """Store max(current, `value`) at `key`; returns what is stored."""
    return int(await redis.eval(_RAISE, 1, key, int(value)))


async def read_int(redis: RedisClient, key: str) -> int | None:
    raw = await redis.get(key)
    return None if raw is None else int(raw)
