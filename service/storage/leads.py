"""Leads Koban sent us: each one's contact details (personal data) under its guid, kept
`lead_retention`, and a dedup guard per (guid, form digest) kept `lead_dedup`, written in
one step with the ``koban.lead.received`` event (`service.storage.non_lot_events`).

Both lifetimes are Redis TTLs: they run on Redis's clock, as the idempotency records do.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from service.storage.non_lot_events import NonLotEvent, append_non_lot_event
from service.storage.store import LotStore

__all__ = ["LeadRecords"]


class LeadRecords:
    def __init__(self, store: LotStore) -> None:
        self.store = store

    def key(self, guid: str) -> str:
        return f"{self.store.keys.prefix}lead:{guid}"

    def guard_key(self, guid: str, digest: str) -> str:
        return f"{self.store.keys.prefix}leaddup:{guid}:{digest}"

    async def receive(
        self,
        guid: str,
        digest: str,
        contact: dict[str, Any],
        event: NonLotEvent,
        *,
        retention_ms: int,
        dedup_ms: int,
    ) -> str | None:
        """Keep the contact and append `event` → its id; None when the same form was
        received within `dedup_ms` (nothing written)."""
        return await append_non_lot_event(
            self.store,
            event,
            records=[(self.key(guid), orjson.dumps(contact))],
            ttl_ms=retention_ms,
            guard=(self.guard_key(guid, digest), dedup_ms),
        )

    async def get(self, guid: str) -> dict[str, Any] | None:
        raw = cast(bytes | None, await self.store.redis.get(self.key(guid)))
        return None if raw is None else cast(dict[str, Any], orjson.loads(raw))
