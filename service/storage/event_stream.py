"""Reading the tenant's event stream: pages after a position, and live tails.

Entries are the stored CloudEvents (field ``ce``). A position older than retention —
entries after it were trimmed (`service.storage.retention` records the newest trimmed id
as the stream's ``max-deleted-entry-id``) — raises `EventsTrimmed`; the check and the read
are one ``MULTI``, so a trim in between cannot open an unseen gap. Live tails block in
``XREAD`` on connections from a pool of their own (`StreamClients`), never the writes'.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson

from service.storage.errors import StoreResponseError
from service.storage.redis_client import RedisClient, blocking_client, sibling
from service.storage.store import LotStore

__all__ = [
    "Entry",
    "EventsTrimmed",
    "StreamClients",
    "StreamPos",
    "StreamTail",
    "event_types_after",
    "parse_stream_id",
    "read_after",
    "stream_end",
]

Entry = tuple[str, dict[str, Any]]
StreamPos = tuple[int, int]

_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_U64 = 2**64


class EventsTrimmed(Exception):
    """Entries after `after` are no longer retained: the reader missed events."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


def parse_stream_id(text: str) -> StreamPos | None:
    """``<milliseconds>-<sequence>`` as a pair, or None when `text` is not a stream id."""
    match = _ID.match(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms < _U64 and seq < _U64 else None


def _pos(raw: bytes | str) -> StreamPos:
    text = raw.decode() if isinstance(raw, bytes) else raw
    parsed = parse_stream_id(text)
    assert parsed is not None, text
    return parsed


def _gap_before(info: dict[str, Any]) -> StreamPos:
    """A position before this one may have lost entries; at or after it, none were."""
    deleted = _pos(info.get("max-deleted-entry-id") or b"0-0")
    length, added = int(info.get("length", 0)), int(info.get("entries-added", 0))
    if deleted == (0, 0) and added > length:
        # Trimmed by something that did not record it (a hand-run XTRIM): be safe, the
        # first entry (or, when empty, the last id) bounds what may have been lost.
        first = info.get("first-entry")
        return _pos(first[0] if first else info.get("last-generated-id") or b"0-0")
    return deleted


def _decode(entries: list[Any]) -> list[Entry]:
    out: list[Entry] = []
    for raw_id, fields in entries:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        out.append((entry_id, orjson.loads(fields[b"ce"])))
    return out


async def read_after(store: LotStore, after: str | None, count: int) -> tuple[list[Entry], str]:
    """Up to `count` entries strictly after `after` (from the oldest retained without it)
    and the position to continue from; `EventsTrimmed` when entries after `after` were
    trimmed."""
    key = store.keys.events
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(key)
        pipe.xrange(key, min=f"({after}" if after else "-", max="+", count=count)
        info, entries = await pipe.execute(raise_on_error=False)
    if isinstance(entries, Exception):
        raise entries
    if isinstance(info, StoreResponseError) and "no such key" in str(info).lower():
        info = None  # no stream yet: nothing written, nothing trimmed
    elif isinstance(info, Exception):
        raise info
    if after is not None and info is not None and _pos(after) < _gap_before(info):
        raise EventsTrimmed(after)
    items = _decode(cast(list[Any], entries))
    if items:
        return items, items[-1][0]
    if after is not None:
        return items, after
    last = info.get("last-generated-id") if info is not None else None
    return items, (last.decode() if isinstance(last, bytes) else last or "0-0")


async def stream_end(store: LotStore) -> str:
    """The id after which new entries will come (``0-0`` when there is no stream yet)."""
    try:
        info = await store.redis.xinfo_stream(store.keys.events)
    except StoreResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return "0-0"
    last = info.get("last-generated-id") or b"0-0"
    return last.decode() if isinstance(last, bytes) else str(last)


def _stream_entries(reply: Any, key: str) -> list[Any]:
    """XREAD's entries for `key` (``[[key, entries]]``, or a map of them)."""
    pairs = reply.items() if isinstance(reply, dict) else (reply or [])
    for name, value in pairs:
        if name in (key, key.encode()):
            return list(value)
    return []


class StreamTail:
    """A live reader of one tenant's stream, on a connection of its own."""

    def __init__(self, conn: RedisClient, key: str) -> None:
        self.conn = conn
        self.key = key

    @classmethod
    def of(cls, store: LotStore) -> StreamTail:
        """A tail on the store's own client (a command-line reader, not a server)."""
        return cls(store.redis, store.keys.events)

    async def read(self, position: str, count: int, block_ms: int) -> list[Entry]:
        """The entries after `position`, waiting up to `block_ms` for one."""
        reply = await self.conn.xread({self.key: position}, count=count, block=block_ms)
        return _decode(_stream_entries(reply, self.key))

    async def last_id(self) -> str:
        """The id of the stream's newest entry (``0-0`` when it is empty): a concrete
        position to follow from (``$`` would only count from the first read)."""
        newest: Any = await self.conn.xrevrange(self.key, count=1)
        if not newest:
            return "0-0"
        entry_id = newest[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class StreamClients:
    """The live tails' own pools, one per Redis server (or cluster) of the tenants."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._clients: dict[int, RedisClient] = {}

    def _client(self, redis: RedisClient) -> RedisClient:
        client = self._clients.get(id(redis))
        if client is None:
            client = self._clients[id(redis)] = sibling(redis, self.max_connections)
        return client

    @contextlib.asynccontextmanager
    async def tail(self, store: LotStore) -> AsyncIterator[StreamTail]:
        """A tail of `store`'s stream, its connection given back on leaving."""
        async with blocking_client(self._client(store.redis)) as conn:
            yield StreamTail(conn, store.keys.events)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


def _event_type(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


async def event_types_after(
    store: LotStore, after: str, count: int
) -> list[tuple[str, str | None]]:
    """(entry id, CloudEvents type or None when unreadable) of up to `count` entries
    strictly after `after`."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await store.redis.xrange(store.keys.events, min="(" + after, max="+", count=count),
    )
    return [
        (i.decode() if isinstance(i, bytes) else str(i), _event_type(fields.get(b"ce")))
        for i, fields in entries
    ]
