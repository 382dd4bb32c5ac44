"""The tenant's event stream over HTTP (SPEC §3, §5): a JSON page and a live SSE stream.

* ``GET /v1/tenants/{t}/events?after=&limit=`` → ``{"items": [CloudEvent…], "next"}``:
  the entries strictly after the stream entry id `after` (oldest retained first without
  it), at most `limit` (1..1000, default 100). ``next`` is the id of the last item, or
  `after` when nothing is newer (or the stream's last id when neither): hand it back as
  `after` to continue, so a consumer polls with one cursor.
* ``GET /v1/tenants/{t}/events/stream`` (``text/event-stream``): each entry as
  ``id: <stream id>``, ``event: <CloudEvents type>``, ``data: <CloudEvent JSON>``, starting
  after ``Last-Event-ID`` (the header a reconnecting EventSource sends; it wins over
  ``?after=``), or — with neither — with the entries appended from now on. A ``: ping``
  comment every 15 s keeps proxies from closing an idle stream.

A position older than retention — entries after it were trimmed (`service.storage.retention`
records the newest trimmed id as the stream's ``max-deleted-entry-id``) — is answered
``410 EVENTS_EXPIRED`` before anything is streamed: the consumer has missed events and
must resynchronise (lot reads, ``/history``) instead of silently skipping them. The check
and the read are one ``MULTI``, so a trim in between cannot open an unseen gap.

Items are the stored CloudEvents; a partner token sees other partners' holders redacted
(``thirdGuid``/``partnerGuid`` null, ``data.redacted: true``), as in ``/history``.

Each SSE client reads with ``XREAD BLOCK`` (≤ 2 s, under redis-py's socket timeout) on a
connection of its own taken from the streams' own pool (so listeners never starve the
writes of connections), released when the stream ends: when the client
goes away (noticed within one read) and at once when the app shuts down
(`close_event_streams`, an ``on_shutdown`` hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from typing import Annotated, Any, cast

import orjson
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from redis.exceptions import RedisError, ResponseError

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import ApiError, json_response, validation_failed
from service.entrypoints.api.logging import REQUEST_ID_HEADER, request_id_of
from service.entrypoints.api.models import Limit, dump
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.routes_lots import BASE, redact_event
from service.storage.redis_client import RedisClient, blocking_client, sibling

__all__ = [
    "BLOCK_MS",
    "EVENTS_EXPIRED",
    "HEARTBEAT_S",
    "EventPageOut",
    "EventsQuery",
    "StreamQuery",
    "close_event_streams",
    "routes",
]

log = structlog.get_logger("service.entrypoints.api.events")

routes = web.RouteTableDef()
EVENTS = BASE + "/events"
EVENTS_EXPIRED = "EVENTS_EXPIRED"

BLOCK_MS = 2000  # one XREAD's wait: bounds how late a gone client is noticed
HEARTBEAT_S = 15.0
STREAM_BATCH = 100  # entries per XREAD while streaming
LAST_EVENT_ID = "Last-Event-ID"

_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_U64 = 2**64


# --------------------------------------------------------------------------- stream ids

StreamPos = tuple[int, int]


def _parse_id(text: str) -> StreamPos | None:
    match = _ID.match(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms < _U64 and seq < _U64 else None


def _stream_id(value: str) -> str:
    if _parse_id(value) is None:
        raise ValueError("not a stream entry id ('<milliseconds>-<sequence>')")
    return value


StreamId = Annotated[str, AfterValidator(_stream_id)]


def _pos(raw: bytes | str) -> StreamPos:
    text = raw.decode() if isinstance(raw, bytes) else raw
    parsed = _parse_id(text)
    assert parsed is not None, text
    return parsed


# --------------------------------------------------------------------------- models


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventsQuery(_Query):
    after: StreamId | None = None
    limit: Limit = 100


class StreamQuery(_Query):
    after: StreamId | None = None


class EventPageOut(BaseModel):
    items: list[dict[str, Any]]
    next: str = Field(description="the stream entry id to pass as `after` for what follows")


# --------------------------------------------------------------------------- reading

Entry = tuple[str, dict[str, Any]]


def _expired(after: str) -> ApiError:
    return ApiError(
        410,
        EVENTS_EXPIRED,
        f"Events after {after} are no longer retained; resynchronise from the lots, "
        "then read the stream from its start (no 'after').",
    )


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


async def read_after(
    redis: RedisClient, key: str, after: str | None, count: int
) -> tuple[list[Entry], str]:
    """Up to `count` entries strictly after `after` (from the oldest retained without it)
    and the position to continue from; 410 when entries after `after` were trimmed."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(key)
        pipe.xrange(key, min=f"({after}" if after else "-", max="+", count=count)
        info, entries = await pipe.execute(raise_on_error=False)
    if isinstance(entries, Exception):
        raise entries
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        info = None  # no stream yet: nothing written, nothing trimmed
    elif isinstance(info, Exception):
        raise info
    if after is not None and info is not None and _pos(after) < _gap_before(info):
        raise _expired(after)
    items = _decode(cast(list[Any], entries))
    if items:
        return items, items[-1][0]
    if after is not None:
        return items, after
    last = info.get("last-generated-id") if info is not None else None
    return items, (last.decode() if isinstance(last, bytes) else last or "0-0")


def _render(event: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return redact_event(event, caller) if caller.partner is not None else event


LIST_EVENTS = Operation(
    "A page of the tenant's event stream (CloudEvents 1.0), oldest first",
    "events",
    {200: Reply(EventPageOut, "The entries after `after`; `next` continues.")},
    merge(AUTH_ERRORS, {410: [EVENTS_EXPIRED]}),
    scope=READ,
    query=EventsQuery,
)


@routes.get(EVENTS)
@documented(LIST_EVENTS)
async def list_events(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    query = LIST_EVENTS.parse_query(request)
    store = caller.tenant.store
    entries, position = await read_after(store.redis, store.keys.events, query.after, query.limit)
    page = EventPageOut(items=[_render(e, caller) for _, e in entries], next=position)
    return json_response(dump(page))


# --------------------------------------------------------------------------- streaming

# One "closing" flag per app, set by the on_shutdown hook; streams watch it.
_CLOSING: weakref.WeakKeyDictionary[web.Application, asyncio.Event] = weakref.WeakKeyDictionary()


def _closing(app: web.Application) -> asyncio.Event:
    event = _CLOSING.get(app)
    if event is None:
        event = _CLOSING[app] = asyncio.Event()
    return event


async def close_event_streams(app: web.Application) -> None:
    """``on_shutdown`` hook: every open stream of `app` ends now (and new ones at once),
    instead of holding the shutdown until aiohttp's timeout cancels them."""
    _closing(app).set()


# Streams hold a connection each for as long as the client listens: they take them from a
# pool of their own (per app and Redis server), never from the one the writes use.
STREAM_CONNECTIONS = 1000
_STREAM_CLIENTS: weakref.WeakKeyDictionary[web.Application, dict[int, RedisClient]] = (
    weakref.WeakKeyDictionary()
)


def _stream_client(app: web.Application, redis: RedisClient) -> RedisClient:
    clients = _STREAM_CLIENTS.setdefault(app, {})
    client = clients.get(id(redis))
    if client is None:
        client = clients[id(redis)] = sibling(redis, STREAM_CONNECTIONS)
    return client


async def close_stream_clients(app: web.Application) -> None:
    """``on_cleanup`` hook: the streams' own pools are closed with the app."""
    for client in _STREAM_CLIENTS.pop(app, {}).values():
        await client.aclose()


def _start_position(request: web.Request, query: StreamQuery) -> str | None:
    header = request.headers.get(LAST_EVENT_ID, "").strip()
    if header:
        if _parse_id(header) is None:
            raise validation_failed([{"field": LAST_EVENT_ID, "message": "not a stream entry id"}])
        return header
    return query.after


def _connected(request: web.Request, sse: EventSourceResponse) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing() and sse.is_connected()


async def _send(sse: EventSourceResponse, entries: list[Entry], caller: Caller) -> None:
    for entry_id, event in entries:
        data = orjson.dumps(_render(event, caller)).decode()
        await sse.send(data, id=entry_id, event=str(event.get("type", "message")))


async def _cancel(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
        await task


async def _pump(
    request: web.Request,
    sse: EventSourceResponse,
    conn: RedisClient,
    key: str,
    position: str,
    caller: Caller,
    closing: asyncio.Event,
) -> None:
    """XREAD BLOCK after `position` until the client goes, the app closes or Redis fails."""
    stop: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    read: asyncio.Future[Any] | None = None
    try:
        while not stop.done() and _connected(request, sse):
            read = asyncio.ensure_future(
                conn.xread({key: position}, count=STREAM_BATCH, block=BLOCK_MS)
            )
            await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                break  # closing: the read is cancelled below
            reply = read.result()
            read = None
            entries = _decode(_stream_entries(reply, key))
            if entries:
                await _send(sse, entries, caller)
                position = entries[-1][0]
    finally:
        if read is not None:
            await _cancel(read)
        await _cancel(stop)


def _stream_entries(reply: Any, key: str) -> list[Any]:
    """XREAD's entries for `key` (``[[key, entries]]``, or a map of them)."""
    pairs = reply.items() if isinstance(reply, dict) else (reply or [])
    for name, value in pairs:
        if name in (key, key.encode()):
            return list(value)
    return []


STREAM_EVENTS = Operation(
    "The tenant's event stream, live (server-sent events)",
    "events",
    {
        200: Reply(
            None,
            "`id:` stream entry id, `event:` CloudEvents type, `data:` the CloudEvent "
            "JSON; a `: ping` comment every 15 s.",
            "text/event-stream",
            {"type": "string"},
        )
    },
    merge(AUTH_ERRORS, {410: [EVENTS_EXPIRED]}),
    scope=READ,
    query=StreamQuery,
    description="Resumes after the `Last-Event-ID` header (a reconnecting "
    "EventSource sends it; it wins over `after`), else after `after`, else from now.",
)


@routes.get(EVENTS + "/stream")
@documented(STREAM_EVENTS)
async def stream_events(request: web.Request) -> web.StreamResponse:
    caller = authenticate(request, "read")
    query = STREAM_EVENTS.parse_query(request)
    start = _start_position(request, query)
    store = caller.tenant.store
    key = store.keys.events
    first: list[Entry] = []
    if start is None:  # live: what is appended from now on
        position = await _stream_end(store.redis, key)
    else:  # catch up (410 if too old) before the response starts
        first, position = await read_after(store.redis, key, start, STREAM_BATCH)
    closing = _closing(request.app)
    # A connection of its own for the blocking reads, from the streams' pool.
    async with blocking_client(_stream_client(request.app, store.redis)) as conn:
        # Prepared here, before the API's middleware sees it: the id header is set now.
        headers = {REQUEST_ID_HEADER: request_id_of(request)}
        async with sse_response(request, ping_interval=HEARTBEAT_S, headers=headers) as sse:
            try:
                await _send(sse, first, caller)
                await _pump(request, sse, conn, key, position, caller, closing)
            except (OSError, RuntimeError):
                pass  # the client went away (or stalled past the send timeout) as we wrote
            except RedisError as exc:  # the client reconnects with Last-Event-ID
                log.warning("event_stream_store_error", error=str(exc))
        return sse


async def _stream_end(redis: RedisClient, key: str) -> str:
    """The id after which new entries will come (``0-0`` when there is no stream yet)."""
    try:
        info = await redis.xinfo_stream(key)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return "0-0"
    last = info.get("last-generated-id") or b"0-0"
    return last.decode() if isinstance(last, bytes) else str(last)
