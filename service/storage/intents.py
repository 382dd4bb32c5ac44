"""The pending-intents index: ``extcode/intent_id`` members scored by creation time.

The commit script keeps it in step with the lots; these reads list it, and an entry whose
lot is gone is forgotten here.
"""

from __future__ import annotations

from typing import cast

from service.storage.keys import intent_member, split_intent_member
from service.storage.store import LotStore

__all__ = ["find_intent_lot", "forget_intent", "pending_members"]


async def pending_members(store: LotStore, older_than: int | None = None) -> list[tuple[str, str]]:
    """(extcode, intent_id) of the pending intents, oldest first (only those created at or
    before `older_than` when given)."""
    top: float | str = "+inf" if older_than is None else older_than
    members = await store.redis.zrangebyscore(store.keys.intents, "-inf", top)
    return [split_intent_member(cast(bytes, m)) for m in members or []]


async def find_intent_lot(store: LotStore, intent_id: str) -> str | None:
    """The extcode of a pending intent, from its id alone."""
    async for member, _score in store.redis.zscan_iter(store.keys.intents, match=f"*/{intent_id}"):
        code, iid = split_intent_member(member)
        if iid == intent_id:
            return code
    return None


async def forget_intent(store: LotStore, extcode: str, intent_id: str) -> None:
    """Drop an index entry whose lot no longer exists."""
    await store.redis.zrem(store.keys.intents, intent_member(extcode, intent_id))
