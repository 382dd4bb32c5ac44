"""Read routes on lots: the lot, its availability (GetLotStatus mirror), the listing and
the lot's history. Reads apply lazy expiry (an option due at or before now is shown as
expired even before the sweep wrote it) and write nothing. How a lot is shown is
`lot_views.py`; how availability is judged, `lot_availability.py`."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from service.entrypoints.api import lot_availability
from service.entrypoints.api.answers import AvailabilityAnswers
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import TENANTS_KEY, authenticate, koban_for
from service.entrypoints.api.errors import json_response
from service.entrypoints.api.lot_availability import (
    availability,
    local_availability,
    remembered_body,
)
from service.entrypoints.api.lot_views import lot_out, option_out, redact_event
from service.entrypoints.api.models import (
    AvailabilityOut,
    AvailabilityQuery,
    HistoryOut,
    KobanStatusOut,
    LotListOut,
    LotOut,
    LotsQuery,
    NoQuery,
    dump,
)
from service.entrypoints.api.openapi import (
    AUTH_ERRORS,
    KOBAN_ERRORS,
    READ,
    Operation,
    Reply,
    documented,
    merge,
    rules,
)
from service.entrypoints.api.paging import Position, decode_cursor, encode_cursor
from service.storage.codec import decode_lot
from service.storage.lot_reads import raw_lot_with_counts, raw_lots
from service.storage.paging import lots_after
from service.storage.redis_client import RedisClient
from service.storage.redis_mux import MuxReader
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Lot

__all__ = [
    "ANSWERS",
    "FAST_READS",
    "availability",
    "hot_routes",
    "install_fast_reads",
    "local_availability",
    "lot_out",
    "option_out",
    "redact_event",
    "remembered_body",
    "routes",
]

routes = web.RouteTableDef()
# Registered ahead of every other route (`build_api_app`): aiohttp tries the dynamic
# routes one regular expression after another in the order they were added, and the
# availability read is the API's hottest route (resolving it: 7.0 µs when third, 2.9 µs
# first, of a ≈ 110 µs read). Its path overlaps no other route's: the order changes
# nothing else.
hot_routes = web.RouteTableDef()
BASE = "/v1/tenants/{tenant}"
LOT = BASE + "/lots/{extcode}"

# Lots read per Redis round trip while listing, and at most per page (a page with fewer
# items than `limit` and a cursor means the filter matched little in that stretch).
SCAN_BATCH = 200
SCAN_BUDGET = 5000
START: Position = (-(2**53), None)
# The availability route's Redis reads go through this reader when the app has one
# (`install_fast_reads`; `koban-options api` does it), else through the tenant's client.
log = structlog.get_logger("service.entrypoints.api")
FAST_READS = web.AppKey("api_fast_reads", MuxReader)
# The availability answers remembered per lot (`build_api_app` gives every app one).
ANSWERS = web.AppKey("api_availability_answers", AvailabilityAnswers)


# --------------------------------------------------------------------------- reads


async def read_lot(caller: Caller, extcode: str) -> Lot:
    tenant = caller.tenant
    lot = await tenant.store.read(extcode, tenant.clock.now())
    if lot is None:
        raise RuleViolation(ErrorCode.LOT_UNKNOWN, f"Lot {extcode} is unknown.")
    return lot


GET_LOT = Operation(
    "The lot: status, state path, options, préréservation, next tick",
    "lots",
    {200: Reply(LotOut, "The lot (lazy expiry applied).")},
    merge(AUTH_ERRORS, rules(ErrorCode.LOT_UNKNOWN)),
    scope=READ,
    query=NoQuery,
)


@routes.get(LOT)
@documented(GET_LOT)
async def get_lot(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    GET_LOT.parse_query(request)
    lot = await read_lot(caller, request.match_info["extcode"])
    return json_response(dump(lot_out(lot, caller)))


GET_HISTORY = Operation(
    "The lot's events, oldest first",
    "lots",
    {200: Reply(HistoryOut, "The lot's CloudEvents.")},
    merge(AUTH_ERRORS, rules(ErrorCode.LOT_UNKNOWN)),
    scope=READ,
    query=NoQuery,
)


@routes.get(LOT + "/history")
@documented(GET_HISTORY)
async def get_history(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    GET_HISTORY.parse_query(request)
    extcode = request.match_info["extcode"]
    store = caller.tenant.store
    events = await store.history(extcode)
    if not events and await store.load(extcode) is None:
        raise RuleViolation(ErrorCode.LOT_UNKNOWN, f"Lot {extcode} is unknown.")
    items = [redact_event(e, caller) for e in events]
    return json_response(dump(HistoryOut(extcode=extcode, items=items)))


# --------------------------------------------------------------------------- availability


GET_AVAILABILITY = Operation(
    "GetLotStatus mirror, with prospect rules and optional Koban comparison",
    "lots",
    {200: Reply(AvailabilityOut, "Whether an option can be placed now.")},
    merge(AUTH_ERRORS, KOBAN_ERRORS),
    scope=READ,
    query=AvailabilityQuery,
)


@hot_routes.get(LOT + "/availability")
@documented(GET_AVAILABILITY)
async def get_availability(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    query = GET_AVAILABILITY.parse_query(request)
    extcode = request.match_info["extcode"]
    tenant = caller.tenant
    store = tenant.store
    koban = koban_for(request, caller) if query.source == "koban" else None
    now = tenant.clock.now()
    rules = tenant.rules
    third = query.third_guid
    counted = lot_availability.counted_rules(rules, third)
    fast = request.app.get(FAST_READS)
    # Without a count that can change the answer (no prospect, no per-user limit): the lot
    # alone.
    raw, user, prospect = await raw_lot_with_counts(store, extcode, fast, third, counted)
    answers = request.app.get(ANSWERS)
    if answers is not None and koban is None and third is None and raw is not None:
        body = lot_availability.remembered_body(
            answers, tenant.name, extcode, raw, rules, now, user
        )
        return web.Response(body=body, content_type="application/json")
    lot, answer = lot_availability.local_availability(
        extcode, raw, rules, now, third, prospect, user
    )
    if koban is not None:
        status = await koban.get_lot_status(extcode)
        answer["koban"] = dump(
            KobanStatusOut(result=status.result, max_rank=status.max_rank, end_date=status.end_date)
        )
        answer["drift"] = lot_availability.drift(answer["result"], lot, status, caller, now)
    return json_response(answer)


def install_fast_reads(app: web.Application, redis: RedisClient) -> None:
    """Let the availability route, and the hot path of the stores of the app's tenants
    that use `redis` (`LotStore.fast`: reads, the read and commit of every transition),
    go through a `MuxReader` of `redis`'s server (one shared connection, closed with the
    app), TLS included. A Redis Cluster client keeps redis-py's per-key routing: said in
    one line at start-up, so a slower API is never a silent surprise."""
    reader = MuxReader.for_client(redis)
    if reader is None:
        log.warning(
            "fast_reads_off",
            reason="Redis Cluster client: reads go through redis-py, routed per key",
        )
        return
    app[FAST_READS] = reader
    stores = [t.store for t in app[TENANTS_KEY].values() if t.store.redis is redis]
    for store in stores:
        store.fast = reader

    async def close(app: web.Application) -> None:
        for store in stores:
            if store.fast is reader:
                store.fast = None
        await reader.aclose()

    app.on_cleanup.append(close)


# --------------------------------------------------------------------------- listing


def status_filter(text: str | None) -> set[str] | None:
    if text is None:
        return None
    return {part.strip().upper() for part in text.split(",") if part.strip()}


LIST_LOTS = Operation(
    "Lots, paginated by last modification",
    "lots",
    {200: Reply(LotListOut, "A page of lots and the cursor of the next one.")},
    AUTH_ERRORS,
    scope=READ,
    query=LotsQuery,
)


@routes.get(BASE + "/lots")
@documented(LIST_LOTS)
async def list_lots(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    query = LIST_LOTS.parse_query(request)
    statuses = status_filter(query.status)
    position: Position
    if query.cursor is not None:
        position = decode_cursor(query.cursor)
    elif query.modified_after is not None:
        position = (query.modified_after, None)
    else:
        position = START
    expiring_before = query.expiring_before

    def keep(lot: Lot) -> bool:
        if statuses is not None and lot.status.upper() not in statuses:
            return False
        if query.program is not None and lot.program != query.program:
            return False
        if expiring_before is not None:
            expiry = lot.next_expiry()
            return expiry is not None and expiry < expiring_before
        return True

    return await lot_page(caller, position, query.limit, keep)


async def lot_page(
    caller: Caller, position: Position, limit: int, keep: Callable[[Lot], bool]
) -> web.Response:
    """A page of the tenant's lots after `position` in last-modification order, as of now
    (lazy expiry), those `keep` accepts, with the cursor of the next page (null once the
    scan reached the end; a page stops early after `SCAN_BUDGET` lots scanned)."""
    tenant = caller.tenant
    store = tenant.store
    now = tenant.clock.now()
    items: list[LotOut] = []
    scanned = 0
    exhausted = False
    while len(items) < limit and scanned < SCAN_BUDGET:
        batch = await lots_after(store, position, SCAN_BATCH)
        raws = await raw_lots(store, [code for code, _ in batch])
        consumed = 0
        for (code, score), raw in zip(batch, raws, strict=True):
            consumed += 1
            scanned += 1
            position = (score, code)
            if raw is None:
                continue
            lot = decode_lot(code, raw)
            tr.expire_due(lot, now, tenant.rules)
            if not keep(lot):
                continue
            items.append(lot_out(lot, caller))
            if len(items) >= limit:
                break
        if len(batch) < SCAN_BATCH and consumed == len(batch):
            exhausted = True
            break
    cursor = None if exhausted else encode_cursor(position)
    return json_response(dump(LotListOut(items=items, next_cursor=cursor)))
