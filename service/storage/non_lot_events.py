"""Events about something other than a lot (a prospect, a dénonciation, a lead), appended
to the tenant's stream in one atomic step with the records they go with.

The event's ``id`` is ``<kind>:<id>:<n>``, ``n`` counted per ``<kind>:<id>`` in one hash
of the tenant, so ids stay unique per tenant without a lot's sequence. An optional guard
key (``SET NX``) makes the append happen at most once while the guard lives (the lead
webhook's dedup window): a guarded append that finds its guard answers None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from service.storage.events import source
from service.storage.store import LotStore
from statecharts.ticks import to_iso

__all__ = ["NonLotEvent", "append_non_lot_event"]

# KEYS[1] the stream, KEYS[2] the counters hash, KEYS[3] the guard key (or a dummy when
# ARGV[4] is "0"), KEYS[4..] records to set.
# ARGV[1] the counter field "<kind>:<id>" (JSON-escaped), ARGV[2] the envelope without its
# id ("{...}", never empty), ARGV[3] records' TTL ms (0: none), ARGV[4] guard TTL ms (0:
# no guard), ARGV[5..] the records' values, in KEYS order.
_APPEND = """
local guard_ttl = tonumber(ARGV[4])
if guard_ttl > 0 then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', guard_ttl) then return false end
end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local id = ARGV[1] .. ':' .. n
local ttl = tonumber(ARGV[3])
for i = 4, #KEYS do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i + 1])
  end
end
local body = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
redis.call('XADD', KEYS[1], '*', 'ce', body)
return id
"""


class NonLotEvent:
    """A CloudEvent whose subject is ``<kind>:<id>`` (``prospect:<guid>``, …)."""

    def __init__(self, type_: str, kind: str, ident: str, time: int, data: Mapping[str, Any]):
        self.type = type_
        self.subject = f"{kind}:{ident}"
        self.time = time
        self.data = dict(data)

    def envelope(self, tenant: str) -> dict[str, Any]:
        """The CloudEvents attributes but ``id`` (the script numbers it); no ``sequence``
        or ``lotversion``: those belong to a lot."""
        return {
            "specversion": "1.0",
            "source": source(tenant),
            "type": "koban." + self.type,
            "subject": self.subject,
            "time": to_iso(self.time),
            "datacontenttype": "application/json",
            "partitionkey": self.subject,
            "data": self.data,
        }


def _counters_key(store: LotStore) -> str:
    return f"{store.keys.prefix}nlseq"


async def append_non_lot_event(
    store: LotStore,
    event: NonLotEvent,
    *,
    records: Sequence[tuple[str, bytes]] = (),
    ttl_ms: int = 0,
    guard: tuple[str, int] | None = None,
) -> str | None:
    """Append `event` and set `records` (key, value; each kept `ttl_ms`, 0: forever) in one
    step → the event id; None when `guard` (key, ttl ms) was already set (nothing done)."""
    field = orjson.dumps(event.subject).decode()[1:-1]
    body = orjson.dumps(event.envelope(store.tenant))
    guard_key, guard_ttl = guard if guard is not None else (store.keys.events, 0)
    keys = [store.keys.events, _counters_key(store), guard_key, *(k for k, _ in records)]
    args: list[Any] = [field, body, ttl_ms, guard_ttl, *(v for _, v in records)]
    found = await store.redis.eval(_APPEND, len(keys), *keys, *args)
    if found is None:
        return None
    return found.decode() if isinstance(found, bytes) else str(found)
