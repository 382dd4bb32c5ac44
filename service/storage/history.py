"""The tail of a lot's history, read back as (event type, data) pairs.

Webhooks judge replays on it: a drift already recorded is not recorded twice, a
préréservation that already reserved the lot does not reserve it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson

from service.storage.events import expand_data, history_entry
from service.storage.store import LotStore
from statecharts.model import DomainEvent
from statecharts.webhook_rules import RecentEvent

__all__ = ["HISTORY_TAIL_BYTES", "RecentHistory", "already_recorded", "parse_tail", "recent_events"]

# Enough of a lot's history for the last few dozen entries.
HISTORY_TAIL_BYTES = 8192


def parse_tail(tail: bytes) -> tuple[RecentEvent, ...]:
    """The whole entries of a history tail (the first line, cut, is skipped)."""
    out: list[RecentEvent] = []
    for line in tail.split(b"\n"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the cut first line of the tail
        if isinstance(entry, list) and len(entry) == 5 and isinstance(entry[4], dict):
            out.append((str(entry[2]), expand_data(entry[4])))
    return tuple(out)


class RecentHistory:
    """A history tail, parsed when first iterated: most webhooks never look at it."""

    __slots__ = ("_entries", "_tail")

    def __init__(self, tail: bytes) -> None:
        self._tail = tail
        self._entries: tuple[RecentEvent, ...] | None = None

    def __iter__(self) -> Iterator[RecentEvent]:
        if self._entries is None:
            self._entries = parse_tail(self._tail)
        return iter(self._entries)


async def recent_events(store: LotStore, extcode: str) -> RecentHistory:
    """The lot's last history entries (about `HISTORY_TAIL_BYTES` of them)."""
    tail = await store.redis.getrange(store.keys.history(extcode), -HISTORY_TAIL_BYTES, -1)
    return RecentHistory(tail if isinstance(tail, bytes) else str(tail or "").encode())


def already_recorded(recent: Iterable[RecentEvent], event: DomainEvent) -> bool:
    """Whether `recent` holds this event (type and data, as stored)."""
    stored = orjson.loads(history_entry(event, 0, 0))
    wanted = (stored[2], expand_data(stored[4]))
    return any((kind, data) == wanted for kind, data in recent)
