"""A per-key rate limit shared by every process using one Redis (GCRA, one Lua call).

A bucket admits `burst` requests at once and `rate_per_s` on average; a refused request
learns how long to wait. Time is Redis's own (`TIME`), not a process's: workers and
replicas on different hosts share one bucket and must agree on "now"; a rate limit is
real time, never a tenant's test clock.
"""

from __future__ import annotations

import math

from service.storage.redis_client import RedisClient

__all__ = ["take"]

# KEYS[1] the bucket; ARGV emission interval (ms), burst tolerance (ms).
# Returns 0 when admitted, else the milliseconds to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local next_tat = tat + emission
redis.call('SET', KEYS[1], next_tat, 'PX', math.max(1, next_tat - now))
return 0
"""


async def take(redis: RedisClient, key: str, rate_per_s: float, burst: int) -> float:
    """Admit one request on `key`: 0.0 when admitted, else the seconds to wait."""
    emission_ms = 1000.0 / rate_per_s
    tolerance_ms = emission_ms * (burst - 1)
    wait_ms = await redis.eval(_GCRA, 1, key, math.ceil(emission_ms), math.ceil(tolerance_ms))
    return int(wait_ms) / 1000.0
