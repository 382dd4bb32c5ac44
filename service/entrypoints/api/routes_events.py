"""The tenant's event stream over HTTP: a JSON page and a live SSE stream.

``GET …/events?after=&limit=`` → ``{"items": [CloudEvent…], "next"}`` (hand ``next`` back as
`after` to continue). ``GET …/events/stream``: each entry as an SSE message (``id`` the
stream id, ``event`` the CloudEvents type), after ``Last-Event-ID`` (it wins over
``?after=``) or, with neither, from now on; a ``: ping`` every 15 s. A position older than
retention → ``410 EVENTS_EXPIRED`` before anything is streamed. A partner token sees other
partners' holders redacted. Each stream blocks on a connection of its own, released when
the client goes or at once on shutdown (`close_event_streams`). Reading: `storage.event_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Annotated, Any

import orjson
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import ApiError, json_response, validation_failed
from service.entrypoints.api.logging import REQUEST_ID_HEADER, request_id_of
from service.entrypoints.api.models import Limit, dump
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.routes_lots import BASE, redact_event
from service.storage.errors import StoreError
from service.storage.event_stream import (
    Entry,
    EventsTrimmed,
    StreamClients,
    StreamTail,
    parse_stream_id,
    read_after,
    stream_end,
)
from service.storage.store import LotStore

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


# --------------------------------------------------------------------------- stream ids


def _stream_id(value: str) -> str:
    if parse_stream_id(value) is None:
        raise ValueError("not a stream entry id ('<milliseconds>-<sequence>')")
    return value


StreamId = Annotated[str, AfterValidator(_stream_id)]


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


def _expired(after: str) -> ApiError:
    return ApiError(
        410,
        EVENTS_EXPIRED,
        f"Events after {after} are no longer retained; resynchronise from the lots, "
        "then read the stream from its start (no 'after').",
    )


async def _read_after(store: LotStore, after: str | None, count: int) -> tuple[list[Entry], str]:
    try:
        return await read_after(store, after, count)
    except EventsTrimmed as exc:
        raise _expired(exc.after) from None


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
    entries, position = await _read_after(caller.tenant.store, query.after, query.limit)
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
_STREAM_CLIENTS: weakref.WeakKeyDictionary[web.Application, StreamClients] = (
    weakref.WeakKeyDictionary()
)


def _stream_clients(app: web.Application) -> StreamClients:
    clients = _STREAM_CLIENTS.get(app)
    if clients is None:
        clients = _STREAM_CLIENTS[app] = StreamClients(STREAM_CONNECTIONS)
    return clients


async def close_stream_clients(app: web.Application) -> None:
    """``on_cleanup`` hook: the streams' own pools are closed with the app."""
    clients = _STREAM_CLIENTS.pop(app, None)
    if clients is not None:
        await clients.aclose()


def _start_position(request: web.Request, query: StreamQuery) -> str | None:
    header = request.headers.get(LAST_EVENT_ID, "").strip()
    if header:
        if parse_stream_id(header) is None:
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
    with contextlib.suppress(asyncio.CancelledError, StoreError, OSError):
        await task


async def _pump(
    request: web.Request,
    sse: EventSourceResponse,
    tail: StreamTail,
    position: str,
    caller: Caller,
    closing: asyncio.Event,
) -> None:
    """XREAD BLOCK after `position` until the client goes, the app closes or Redis fails."""
    stop: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    read: asyncio.Future[Any] | None = None
    try:
        while not stop.done() and _connected(request, sse):
            read = asyncio.ensure_future(tail.read(position, STREAM_BATCH, BLOCK_MS))
            await asyncio.wait((read, stop), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                break  # closing: the read is cancelled below
            entries = read.result()
            read = None
            if entries:
                await _send(sse, entries, caller)
                position = entries[-1][0]
    finally:
        if read is not None:
            await _cancel(read)
        await _cancel(stop)


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
    first: list[Entry] = []
    if start is None:  # live: what is appended from now on
        position = await stream_end(store)
    else:  # catch up (410 if too old) before the response starts
        first, position = await _read_after(store, start, STREAM_BATCH)
    closing = _closing(request.app)
    # A connection of its own for the blocking reads, from the streams' pool.
    async with _stream_clients(request.app).tail(store) as tail:
        # Prepared here, before the API's middleware sees it: the id header is set now.
        headers = {REQUEST_ID_HEADER: request_id_of(request)}
        async with sse_response(request, ping_interval=HEARTBEAT_S, headers=headers) as sse:
            try:
                await _send(sse, first, caller)
                await _pump(request, sse, tail, position, caller, closing)
            except (OSError, RuntimeError):
                pass  # the client went away (or stalled past the send timeout) as we wrote
            except StoreError as exc:  # the client reconnects with Last-Event-ID
                log.warning("event_stream_store_error", error=str(exc))
        return sse
