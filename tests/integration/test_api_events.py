"""The event stream over HTTP: JSON paging, SSE with Last-Event-ID, 410
after retention, auth and partner redaction; and every event type the service writes is a
valid CloudEvent for the `cloudevents` SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp import web
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_dict
from redis.asyncio import Redis

from service.entrypoints.api import build_api_app, routes_events
from service.storage.retention import trim_events
from service.storage.store import Counts
from service.tenancy import Tenants
from service.usecases import sweep
from service.usecases.intents import resolve_one
from service.usecases.sync import drift_event, record_drift
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Lot
from statecharts.ticks import ceil_tick
from tests.support.api_harness import DAY, OTHER_TENANT_TOKEN, T0, TOKENS, Api, running_api
from tests.support.sse import Sse


@pytest.fixture
async def api(redis: Redis, tenant: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.setattr(routes_events, "BLOCK_MS", 200)  # notice a gone client quickly
    async with running_api(redis, tenant) as running:
        yield running


async def stream_ids(api: Api) -> list[str]:
    entries = cast(list[Any], await api.store.redis.xrange(api.store.keys.events))
    return [i.decode() for i, _ in entries]


async def page_all(api: Api, limit: int, after: str | None = None) -> tuple[list[Any], str]:
    items: list[Any] = []
    while True:
        query = f"events?limit={limit}" + (f"&after={after}" if after else "")
        answer = await api.get(query, token="read")
        assert answer.status == 200, answer.body
        assert len(answer.body["items"]) <= limit
        items.extend(answer.body["items"])
        if not answer.body["items"]:
            assert answer.body["next"] == after
            return items, answer.body["next"]
        after = answer.body["next"]


# --------------------------------------------------------------------------- JSON paging


async def test_pages_follow_the_stream_with_after_limit_and_next(api: Api) -> None:
    await api.store.place_local("L1", "p1", None, T0)
    ids = await stream_ids(api)
    assert len(ids) == 10  # nine lots imported, one placement
    first = await api.get("events?limit=4", token="read")
    assert first.status == 200 and first.headers["Content-Type"].startswith("application/json")
    assert [e["subject"] for e in first.body["items"]] == ["L1", "L2", "L3", "L4"]
    assert first.body["next"] == ids[3]
    items, last = await page_all(api, 4)
    assert [e["id"] for e in items] == [e["id"] for e in await api.events()]
    assert last == ids[-1]
    # Exclusive `after`; an `after` past the end is an empty page that keeps the cursor.
    tail = await api.get(f"events?after={ids[7]}", token="read")
    assert [e["type"] for e in tail.body["items"]] == ["koban.lot.imported", "koban.option.placed"]
    assert tail.body["next"] == ids[-1]
    await api.store.cancel("L1", 1, T0 + 60)
    more = await api.get(f"events?after={last}", token="read")
    assert [e["type"] for e in more.body["items"]] == ["koban.option.cancelled"]


async def test_an_empty_stream_pages_from_its_start(api: Api) -> None:
    await api.store.redis.delete(api.store.keys.events)
    empty = await api.get("events", token="read")
    assert (empty.status, empty.body) == (200, {"items": [], "next": "0-0"})
    await api.store.place_local("L1", "p1", None, T0)
    after = await api.get("events?after=0-0", token="read")
    assert [e["type"] for e in after.body["items"]] == ["koban.option.placed"]


async def test_bad_after_and_limit_are_422(api: Api) -> None:
    for query in (
        "after=abc",
        "after=12",
        "after=1-2-3",
        f"after={2**64}-0",
        "after=-1-0",
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=1",
        "after=1-0&after=2-0",
    ):
        answer = await api.get(f"events?{query}", token="read")
        assert (answer.status, answer.code) == (422, "VALIDATION_FAILED"), query
    assert (await api.get("events?limit=1000&after=0-0", token="read")).status == 200


async def test_auth(api: Api) -> None:
    for rest in ("events", "events/stream"):
        none = await api.get(rest, token=None)
        assert (none.status, none.code) == (401, "UNAUTHENTICATED")
        bogus = await api.get(rest, token="nope")
        assert (bogus.status, bogus.code) == (401, "UNAUTHENTICATED")
        other = await api.get(rest, token=OTHER_TENANT_TOKEN)
        assert (other.status, other.code) == (404, "TENANT_UNKNOWN")
        unknown = await api.get(rest, tenant="nobody")
        assert (unknown.status, unknown.code) == (404, "TENANT_UNKNOWN")


async def test_partner_tokens_see_other_partners_holders_redacted(api: Api) -> None:
    await api.store.place_local("L1", "p1", "cgp-1", T0)
    await api.store.place_local("L1", "p2", "cgp-2", T0 + 60)
    await api.store.place_local("L2", "p3", None, T0 + 60)

    async def placed(token: str) -> list[tuple[Any, Any, bool]]:
        items, _ = await page_all(api, 100)
        answer = await api.get("events?limit=1000", token=token)
        assert len(answer.body["items"]) == len(items)
        return [
            (e["data"]["thirdGuid"], e["data"]["partnerGuid"], e["data"].get("redacted", False))
            for e in answer.body["items"]
            if e["type"] == "koban.option.placed"
        ]

    assert await placed("read") == [
        ("p1", "cgp-1", False),
        ("p2", "cgp-2", False),
        ("p3", None, False),
    ]
    assert await placed("cgp1") == [("p1", "cgp-1", False), (None, None, True), (None, None, True)]
    assert await placed("cgp2") == [(None, None, True), ("p2", "cgp-2", False), (None, None, True)]


# --------------------------------------------------------------------------- retention


async def add_batches(api: Api) -> tuple[list[str], list[str]]:
    """Two stretches of entries whose ids differ in milliseconds: (older, newer)."""
    older = await stream_ids(api)
    await asyncio.sleep(0.01)
    await api.store.place_local("L1", "p1", None, T0)
    await api.store.place_local("L2", "p2", None, T0)
    return older, (await stream_ids(api))[len(older) :]


def cutoff_now(entry_id: str, retention: float) -> float:
    """The `now` at which `entry_id` is the oldest entry kept."""
    return int(entry_id.split("-")[0]) / 1000 + retention


async def test_trim_events_keeps_what_is_younger_than_retention(api: Api) -> None:
    older, newer = await add_batches(api)
    store, name = api.store, api.name
    assert await trim_events(store, name, cutoff_now(older[0], DAY), DAY) == 0
    removed = await trim_events(store.redis, name, cutoff_now(newer[0], DAY), DAY)
    assert removed == len(older)
    assert await stream_ids(api) == newer
    assert await trim_events(store, name, cutoff_now(newer[0], DAY), DAY) == 0  # idempotent
    assert await trim_events(store, "no-such-tenant", time.time(), DAY) == 0
    with pytest.raises(ValueError):
        await trim_events(store, name, time.time(), 0)
    history = await store.history("L1")
    assert [e["type"] for e in history] == ["koban.lot.imported", "koban.option.placed"]


async def test_a_position_older_than_retention_is_410(api: Api) -> None:
    older, newer = await add_batches(api)
    await trim_events(api.store, api.name, cutoff_now(newer[0], 3600), 3600)
    gone = await api.get(f"events?after={older[2]}", token="read")
    assert (gone.status, gone.code) == (410, "EVENTS_EXPIRED")
    assert gone.body["requestId"]
    zero = await api.get("events?after=0-0", token="read")
    assert (zero.status, zero.code) == (410, "EVENTS_EXPIRED")
    # The last trimmed entry: nothing after it was lost, so no 410.
    edge = await api.get(f"events?after={older[-1]}", token="read")
    assert edge.status == 200 and [e["subject"] for e in edge.body["items"]] == ["L1", "L2"]
    start = await api.get("events", token="read")
    assert start.status == 200 and len(start.body["items"]) == len(newer)
    sse = await api.get("events/stream", headers={"Last-Event-ID": older[0]}, token="read")
    assert (sse.status, sse.code) == (410, "EVENTS_EXPIRED")
    query = await api.get(f"events/stream?after={older[0]}", token="read")
    assert (query.status, query.code) == (410, "EVENTS_EXPIRED")
    # Everything trimmed: the stream is empty, positions before its last id are gone.
    await trim_events(api.store, api.name, time.time() + 7200, 3600)
    assert await stream_ids(api) == []
    assert (await api.get(f"events?after={newer[0]}", token="read")).status == 410
    last = await api.get(f"events?after={newer[-1]}", token="read")
    assert (last.status, last.body["items"], last.body["next"]) == (200, [], newer[-1])
    assert (await api.get("events", token="read")).body == {"items": [], "next": newer[-1]}


async def test_a_hand_run_xtrim_is_still_noticed(api: Api) -> None:
    older, newer = await add_batches(api)
    ms = int(newer[0].split("-")[0])
    await api.store.redis.xtrim(api.store.keys.events, minid=f"{ms}-0", approximate=False)
    assert (await api.get(f"events?after={older[0]}", token="read")).status == 410
    assert (await api.get(f"events?after={newer[0]}", token="read")).status == 200


# --------------------------------------------------------------------------- SSE


async def open_stream(
    api: Api,
    last_event_id: str | None = None,
    query: str = "",
    token: str = "read",
    base: str | None = None,
) -> Sse:
    """A stream on the harness server, or on the server at `base`."""
    headers = {"Authorization": f"Bearer {TOKENS[token][0]}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    root = base or str(api.client.make_url("")).rstrip("/")
    response = await api.client.session.get(
        root + api.path("events/stream" + query), headers=headers
    )
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Request-ID"]
    return Sse(response)


@contextlib.asynccontextmanager
async def served(api: Api) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """The API served as in production: aiohttp does not cancel a handler whose client
    went away (the test server does), so the stream itself must notice."""
    app = build_api_app(Tenants({api.name: api.tenant}), api.store.redis, webhooks=False)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield runner, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def blocked_readers(redis: Redis) -> int:
    clients = cast(list[dict[str, Any]], await redis.client_list())
    return sum("b" in str(c.get("flags", "")) for c in clients)


async def wait_no_reader(redis: Redis, within: float = 5.0) -> None:
    """Until no connection has stayed blocked in XREAD for a whole BLOCK window."""
    async with asyncio.timeout(within):
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            if await blocked_readers(redis):
                quiet_since = time.monotonic()
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("production", [True, False], ids=["served", "test-server"])
async def test_live_events_disconnect_and_resume_with_last_event_id(
    api: Api, production: bool
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        base = (await stack.enter_async_context(served(api)))[1] if production else None
        await live_disconnect_resume(api, base)


async def live_disconnect_resume(api: Api, base: str | None) -> None:
    store = api.store
    stream = await open_stream(api, base=base)  # no position: what comes from now on
    assert await stream.silent(0.3)  # the nine imports are older
    await store.place_local("L1", "p1", "cgp-1", T0)
    await store.place_local("L1", "p2", None, T0 + 60)
    got = await stream.next(2)
    ids = await stream_ids(api)
    assert [e["id"] for e in got] == ids[-2:]
    assert [e["event"] for e in got] == ["koban.option.placed"] * 2
    first = orjson.loads(got[0]["data"])
    assert first == (await api.events())[-2]
    assert from_dict(first).get("type") == "koban.option.placed"
    # The client goes away; the server notices and gives its Redis connection back.
    stream.response.close()
    await wait_no_reader(store.redis)
    # Missed while away: a cancellation (+ promotion) and a prolongation.
    await store.cancel("L1", 1, T0 + 120)
    await store.prolong("L1", 1, T0 + 3 * DAY, T0 + 180)
    missed = (await stream_ids(api))[len(ids) :]
    assert len(missed) == 3
    again = await open_stream(api, last_event_id=got[-1]["id"], base=base)
    replayed = await again.next(3)
    assert [e["id"] for e in replayed] == missed
    assert [e["event"] for e in replayed] == [
        "koban.option.cancelled",
        "koban.option.promoted",
        "koban.option.prolonged",
    ]
    assert await again.silent(0.3)  # none repeated
    await store.place_local("L2", "p3", None, T0 + 240)
    (live,) = await again.next(1)
    assert live["id"] == (await stream_ids(api))[-1]
    assert await again.silent(0.3)
    again.response.close()
    await wait_no_reader(store.redis)


async def test_stream_resumes_from_after_and_the_header_wins(api: Api) -> None:
    ids = await stream_ids(api)
    by_query = await open_stream(api, query=f"?after={ids[5]}")
    assert [e["id"] for e in await by_query.next(3)] == ids[6:]
    both = await open_stream(api, last_event_id=ids[7], query=f"?after={ids[0]}")
    assert [e["id"] for e in await both.next(1)] == ids[8:]
    assert await both.silent(0.3)
    bad = await api.get("events/stream", headers={"Last-Event-ID": "nope"}, token="read")
    assert (bad.status, bad.code) == (422, "VALIDATION_FAILED")
    assert bad.body["errors"] == [{"field": "Last-Event-ID", "message": "not a stream entry id"}]
    by_query.response.close()
    both.response.close()


async def test_stream_catches_up_beyond_one_batch(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes_events, "STREAM_BATCH", 4)
    ids = await stream_ids(api)
    stream = await open_stream(api, query="?after=0-0")
    assert [e["id"] for e in await stream.next(len(ids))] == ids
    assert await stream.silent(0.3)
    stream.response.close()


async def test_stream_redacts_for_partners_and_sends_heartbeats(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes_events, "HEARTBEAT_S", 0.1)
    stream = await open_stream(api, token="cgp2")
    await api.store.place_local("L1", "p1", "cgp-1", T0)
    (event,) = await stream.next(1)
    data = orjson.loads(event["data"])["data"]
    assert (data["thirdGuid"], data["partnerGuid"], data["redacted"]) == (None, None, True)
    assert await stream.silent(0.35)
    assert ": ping" in stream.comments
    stream.response.close()


async def test_app_shutdown_ends_open_streams_at_once(api: Api) -> None:
    stream = await open_stream(api)
    await asyncio.sleep(0.05)  # the handler is waiting in XREAD
    started = time.monotonic()
    await api.client.server.close()
    assert time.monotonic() - started < 1.0
    with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
        await stream.next(1, within=2)
    await wait_no_reader(api.store.redis)


async def test_production_shutdown_ends_open_streams_at_once(api: Api) -> None:
    async with served(api) as (runner, base):
        streams = [await open_stream(api, base=base), await open_stream(api, base=base)]
        await asyncio.sleep(0.05)
        assert await blocked_readers(api.store.redis) == 2
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 1.0
    for stream in streams:
        with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
            await stream.next(1, within=2)
    await wait_no_reader(api.store.redis)


# --------------------------------------------------------------------------- CloudEvents


async def test_every_event_type_written_is_a_valid_cloud_event(api: Api) -> None:
    store, tenant, now = api.store, api.tenant, T0
    # placed, prolonged, cancelled + promoted (API path)
    await store.place_local("L1", "p1", "cgp-1", now)
    await store.place_local("L1", "p2", None, now)
    await store.prolong("L1", 2, now + 3 * DAY, now)
    await store.cancel("L1", 1, now + 60)
    # expired (+ promoted) by the sweep: its own batched writer
    await store.place_local("L2", "p3", None, now)
    await store.place_local("L2", "p4", None, now + 120)
    await sweep.sweep_expiries(store, ceil_tick(now + 2 * DAY))
    # converted + prereserved; superseded + reserved
    await store.place_local("L3", "p5", None, now)
    await store.place_local("L3", "p6", None, now)
    await store.prereserve("L3", "p5", "cgp-2", 100_00, 10_00, now + 60)
    await store.validate_reservation("L3", now + 120)
    # withdrawn; status_changed; drift; deadline_confirmed
    await store.prereserve("L4", "p1", None, 50_00, 0, now)
    await store.withdraw("L4", "p1", now + 60)
    await store.sync_status("L5", "blocked", "BLOQUE", now)
    await record_drift(tenant, "L6", now, "sync", "test", koban=1, local=0)

    def confirm(lot: Lot, _: Counts) -> tuple[list[DomainEvent], None]:
        option = lot.options[0]
        data = tr.option_data(option, "koban", previousDeadline=None)
        return [DomainEvent("option.deadline_confirmed", now, data)], None

    await store.place_local("L7", "p2", None, now)
    await store.mutate("L7", confirm, now=now)
    # intent.resolved: a pending intent Koban never placed
    intent = await store.reserve_placement("L8", "p3", None, now)
    await resolve_one(tenant, api.koban_client, "L8", intent.id, now + 300)
    assert drift_event(now, "sync", "x").type == "sync.drift_detected"

    items, _ = await page_all(api, 7)
    assert items == await api.events()
    types = {e["type"].removeprefix("koban.") for e in items}
    assert types >= {
        "option.placed",
        "option.promoted",
        "option.expired",
        "option.cancelled",
        "option.prolonged",
        "option.converted",
        "option.superseded",
        "option.deadline_confirmed",
        "lot.prereserved",
        "lot.reserved",
        "lot.withdrawn",
        "lot.status_changed",
        "lot.imported",
        "sync.drift_detected",
        "intent.resolved",
    }
    fmt = JSONFormat()
    seen_ids: set[str] = set()
    for item in items:
        event = from_dict(item)
        assert event["specversion"] == "1.0"
        assert event["source"] == f"koban-options/{api.name}"
        assert event["subject"] == item["subject"] == event["partitionkey"]
        assert event["datacontenttype"] == "application/json"
        assert len(event["sequence"]) == 12 and event["lotversion"] >= 1
        assert event.get_data() == item["data"] and isinstance(item["data"], dict)
        assert item["time"].endswith("Z")
        strict = fmt.read(None, orjson.dumps(item))
        assert strict.get_type() == item["type"] and strict.get_id() == item["id"]
        assert strict.get_extension("sequence") == item["sequence"]
        seen_ids.add(item["id"])
    assert len(seen_ids) == len(items)
    expired = [e for e in items if e["type"] == "koban.option.expired"]
    assert expired and all(e["data"]["actor"] == "sweep" for e in expired)


async def test_listeners_never_take_the_connections_writes_need(api: Api) -> None:
    """More open streams than the writes' pool holds (redis_client.MAX_CONNECTIONS): each
    stream's blocking reads use the streams' own pool, so a write still goes through."""
    pool = api.store.redis.connection_pool
    size = pool.max_connections
    url = str(api.client.make_url(api.path("events/stream")))
    auth = {"Authorization": f"Bearer {TOKENS['read'][0]}"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    streams: list[Sse] = []
    try:
        for _ in range(size + 5):
            response = await session.get(url, headers=auth)
            assert response.status == 200
            streams.append(Sse(response))
        deadline = asyncio.get_running_loop().time() + 20
        while await blocked_readers(api.store.redis) < size + 5:  # every stream is reading
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert len(pool._in_use_connections) < 5  # type: ignore[attr-defined]
        placed = await api.place("L1", "p1")
        assert placed.status == 201, placed.body
        got = await streams[-1].next(1)
        assert got[0]["event"] == "koban.option.placed"
    finally:
        for stream in streams:
            stream.response.close()
        await session.close()
    await wait_no_reader(api.store.redis, within=10)
