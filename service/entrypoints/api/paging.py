"""Keyset paging over a sorted set: stable while members are added or re-scored.

A position is ``(score, member)``; a page is the members strictly after it in Redis' own
order (score, then member bytes). ``member=None`` means "after every member of that
score" (``modifiedAfter`` is exclusive). Ties are common — a stock sync stamps every lot it
imports with the same instant — so the position inside a run of equal scores is found by
a binary search in a Lua script (byte-wise comparison: Lua's ``<`` follows the server's
locale), never by an offset that would shift when a member moves.

Cursors given to clients are opaque: base64url of ``[score, member]``.
"""

from __future__ import annotations

import base64
import binascii
from typing import cast

import orjson

from service.entrypoints.api.errors import validation_failed
from service.storage.redis_client import RedisClient

__all__ = ["Position", "decode_cursor", "encode_cursor", "page_after"]

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


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(position))).decode().rstrip("=")


def decode_cursor(text: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and (value[1] is None or isinstance(value[1], str))
    ):
        return value[0], value[1]
    raise validation_failed([{"field": "cursor", "message": "not a cursor of this listing"}])
