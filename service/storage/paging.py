"""Keyset paging over a sorted set: stable while members are added or re-scored.

A position is ``(score, member)``; a page is the members strictly after it in Redis' own
order (score, then member bytes). ``member=None`` means "after every member of that
score". Ties are common — a stock sync stamps every lot it imports with the same instant —
so the position inside a run of equal scores is found by a binary search in a Lua script
(byte-wise comparison: Lua's ``<`` follows the server's locale), never by an offset.
"""

from __future__ import annotations

from typing import cast

from service.storage.redis_client import RedisClient
from service.storage.store import LotStore

__all__ = ["Position", "expiries_after", "lots_after", "page_after"]

Position = tuple[int, str | None]

_PAGE_AFTER = """
local key = KEYS[1]
local score = ARGV[1]
local member = ARGV[2]
local n = tonumber(ARGV[3])
local function le(a, b)
  local la, lb = #a, #b
  for i = 1, math.min(la, lb) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la <= lb
end
local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
local hi = redis.call('ZCOUNT', key, '-inf', score)
if ARGV[4] == '0' then
  lo = hi
else
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local at = redis.call('ZRANGE', key, mid, mid)[1]
    if le(at, member) then lo = mid + 1 else hi = mid end
  end
end
return redis.call('ZRANGE', key, lo, lo + n - 1, 'WITHSCORES')
"""


async def page_after(
    redis: RedisClient, key: str, after: Position, count: int
) -> list[tuple[str, int]]:
    """Up to `count` (member, score) strictly after `after`."""
    score, member = after
    script = redis.register_script(_PAGE_AFTER)
    flat = cast(
        list[bytes],
        await script(
            keys=[key],
            args=[score, member or "", count, "0" if member is None else "1"],
        ),
    )
    return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


async def lots_after(store: LotStore, after: Position, count: int) -> list[tuple[str, int]]:
    """The next `count` (extcode, modified at) of the tenant's lots index."""
    return await page_after(store.redis, store.keys.lots, after, count)


async def expiries_after(store: LotStore, after: Position, count: int) -> list[tuple[str, int]]:
    """The next `count` (``extcode/option_id``, effective expiry) of the expiry index."""
    return await page_after(store.redis, store.keys.expiries, after, count)
