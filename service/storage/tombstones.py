"""Reading tombstones: the options that ended on a lot lately, per prospect.

The tombstone set is scored by end time and written by the commit and sweep scripts with
the lot change that ended the option, so a read made through `LotStore.mutate`'s prefetch
is consistent with the lot it is judged with.
"""

from __future__ import annotations

from service.storage.keys import tombstone_pattern, tombstone_prefix
from service.storage.store import LotStore
from statecharts.webhook_rules import Tombstone

__all__ = ["tombstones_of"]


async def tombstones_of(store: LotStore, extcode: str, third: str, since: int) -> list[Tombstone]:
    """The third's options on this lot that ended at or after `since`.

    The set is not keyed by lot: a ZSCAN with a pattern walks it all (bounded by
    `tombstone_ttl`), so only the webhooks that need it read it.
    """
    prefix = tombstone_prefix(extcode, third).encode()
    out = []
    async for member, score in store.redis.zscan_iter(
        store.keys.tombstones, match=tombstone_pattern(extcode, third), count=1000
    ):
        raw = member if isinstance(member, bytes) else str(member).encode()
        if score < since or not raw.startswith(prefix):
            continue
        deadline, sep, option_id = raw[len(prefix) :].decode().partition("|")
        if not sep or "|" in option_id:
            continue  # another third whose guid continues with "|"
        if deadline.isdigit():
            out.append(Tombstone(int(deadline), int(score), option_id))
        elif deadline == "None":
            out.append(Tombstone(None, int(score), option_id))
    return out
