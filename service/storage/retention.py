"""Retention of a tenant's event stream: trimmed by age with ``XTRIM MINID``, never by
count; the lots' own histories are kept apart and are not touched here.

Stream ids carry Redis' clock in milliseconds, so `trim_events` compares them with
wall-clock time, never a sandbox tenant's test clock. In the same script it records the
newest removed id as the stream's ``max-deleted-entry-id`` (``XTRIM`` alone does not), so a
reader whose position is older can be told ``410 EVENTS_EXPIRED`` instead of missing events
silently (docs/semantics.md, "Event stream retention").
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import cast

from service.storage.keys import TenantKeys
from service.storage.redis_client import RedisClient
from service.storage.store import LotStore
from statecharts.ticks import IsoDuration

__all__ = ["trim_events"]

# KEYS[1] the stream; ARGV[1] the MINID (entries with a smaller id are removed).
_TRIM = """
local key = KEYS[1]
local minid = ARGV[1]
if redis.call('EXISTS', key) == 0 then return 0 end
local newest = redis.call('XREVRANGE', key, '(' .. minid, '-', 'COUNT', 1)
if #newest == 0 then return 0 end
local removed = redis.call('XTRIM', key, 'MINID', '=', minid)
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local info = redis.call('XINFO', 'STREAM', key)
local last, deleted
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local gone = newest[1][1]
local ams, aseq = parse(gone)
local bms, bseq = parse(deleted or '0-0')
if ams > bms or (ams == bms and aseq > bseq) then
  redis.call('XSETID', key, last, 'MAXDELETEDID', gone)
end
return removed
"""


def _seconds(retention: IsoDuration | timedelta | float) -> float:
    if isinstance(retention, IsoDuration):
        return retention.fixed_seconds()
    if isinstance(retention, timedelta):
        return retention.total_seconds()
    return float(retention)


async def trim_events(
    target: LotStore | RedisClient,
    tenant: str,
    now: float,
    retention: IsoDuration | timedelta | float,
) -> int:
    """Remove the tenant's stream entries older than ``now - retention``; returns how many.

    `target` is the tenant's store or a Redis client; `now` is wall-clock UNIX seconds;
    `retention` is the tenant's ``event_retention`` (or a timedelta, or seconds)."""
    seconds = _seconds(retention)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("event retention must be a positive duration")
    redis = target.redis if isinstance(target, LotStore) else target
    cutoff_ms = math.floor((now - seconds) * 1000)
    if cutoff_ms <= 0:
        return 0
    script = redis.register_script(_TRIM)
    removed = await script(keys=[TenantKeys(tenant).events], args=[f"{cutoff_ms}-0"])
    return int(cast(int, removed))
