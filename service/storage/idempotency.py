"""Answers remembered under an ``Idempotency-Key``: one string per scope, in the tenant's
hash slot, holding either an in-flight marker or the answer given.

The HTTP half (scopes, fingerprints, replays) is `service.entrypoints.api.idempotency`.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from service.storage.keys import idempotency_key
from service.storage.store import LotStore

__all__ = ["IdempotencyRecords"]

# Delete the marker only if it is still the one this request set.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class IdempotencyRecords:
    """The remembered answers of one tenant; `scope` is the hex digest of a request's
    scope (see `keys.idempotency_key`)."""

    def __init__(self, store: LotStore) -> None:
        self.store = store

    def _key(self, scope: str) -> str:
        return idempotency_key(self.store.keys, scope)

    async def claim(self, scope: str, marker: bytes, ttl_s: int) -> bool:
        """Set the in-flight `marker` unless the scope holds something already."""
        return bool(await self.store.redis.set(self._key(scope), marker, nx=True, ex=ttl_s))

    async def get(self, scope: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, await self.store.redis.get(self._key(scope)))
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def keep(self, scope: str, record: bytes, ttl_s: int) -> None:
        """Remember the answer for `ttl_s`."""
        await self.store.redis.set(self._key(scope), record, ex=ttl_s)

    async def replace(self, scope: str, record: bytes) -> None:
        """Replace a remembered answer, keeping its time to live (nothing if it expired)."""
        await self.store.redis.set(self._key(scope), record, keepttl=True, xx=True)

    async def release(self, scope: str, marker: bytes) -> None:
        """Drop the in-flight `marker` if it is still there."""
        await self.store.redis.eval(_RELEASE, 1, self._key(scope), marker)
