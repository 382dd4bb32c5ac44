"""A dénonciation's progress per ``Idempotency-Key`` (checked → prospect made → Create
sent), so that a retry after a failure between Koban's calls finishes the job.

One JSON string per request scope, kept as long as the API keeps the answer; the last
step is written together with its events (`service.storage.non_lot_events`).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from service.storage.non_lot_events import NonLotEvent, append_non_lot_event
from service.storage.store import LotStore

__all__ = ["PROGRESS_TTL_S", "DenonciationProgress"]

PROGRESS_TTL_S = 24 * 3600


class DenonciationProgress:
    """The progress records of one tenant; `scope` is the request scope's hex digest."""

    def __init__(self, store: LotStore) -> None:
        self.store = store

    def key(self, scope: str) -> str:
        return f"{self.store.keys.prefix}denonc:{scope}"

    async def get(self, scope: str) -> dict[str, Any]:
        raw = cast(bytes | None, await self.store.redis.get(self.key(scope)))
        return {} if raw is None else cast(dict[str, Any], orjson.loads(raw))

    async def save(self, scope: str, progress: dict[str, Any]) -> None:
        await self.store.redis.set(self.key(scope), orjson.dumps(progress), ex=PROGRESS_TTL_S)

    async def save_with_event(
        self, scope: str | None, progress: dict[str, Any], event: NonLotEvent
    ) -> None:
        """The step and its event in one atomic append (no progress kept without a key)."""
        records = [] if scope is None else [(self.key(scope), orjson.dumps(progress))]
        await append_non_lot_event(self.store, event, records=records, ttl_ms=PROGRESS_TTL_S * 1000)
