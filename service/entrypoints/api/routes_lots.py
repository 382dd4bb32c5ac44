"""Read routes on lots: the lot, its availability (GetLotStatus mirror), the listing and
the lot's history. Reads apply lazy expiry (an option due at or before now is shown as
expired even before the sweep wrote it) and write nothing."""

from __future__ import annotations

from typing import Any, cast

import orjson
import structlog
from aiohttp import web

from service.entrypoints.api.answers import AvailabilityAnswers
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.context import TENANTS_KEY, authenticate, koban_for
from service.entrypoints.api.errors import json_response
from service.entrypoints.api.models import (
    Action,
    AvailabilityOut,
    AvailabilityQuery,
    HistoryOut,
    KobanStatusOut,
    LotListOut,
    LotOut,
    LotsQuery,
    NoQuery,
    OptionOut,
    PendingPlacementOut,
    PrereservationOut,
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
from service.koban import LotStatus
from service.storage.codec import decode_lot
from service.storage.lot_reads import raw_lot_with_counts, raw_lots
from service.storage.paging import lots_after
from service.storage.redis_client import RedisClient
from service.storage.redis_mux import MuxReader
from service.usecases.sync import in_drift_tolerance, koban_occupancy
from statecharts import transitions as tr
from statecharts.capacity import lot_full
from statecharts.decide import decide
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.lot_chart import STATE_PATH
from statecharts.model import Intent, Lot, Option, Rules
from statecharts.ticks import to_iso

__all__ = [
    "ANSWERS",
    "FAST_READS",
    "hot_routes",
    "install_fast_reads",
    "local_availability",
    "lot_out",
    "option_out",
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
_PROBE_HOLDER = "\x00probe"  # matches no prospect: availability without prospect rules


# --------------------------------------------------------------------------- rendering


def option_out(extcode: str, o: Option, caller: Caller) -> OptionOut:
    visible = caller.sees(o.partner)
    return OptionOut(
        extcode=extcode,
        option_id=o.id,
        rank=o.rank,
        third_guid=o.holder if visible else None,
        partner_guid=o.partner if visible else None,
        placed_at=o.placed_at,
        deadline=o.deadline,
        effective_expiry=o.expiry,
        deadline_source=o.source,
        prolonged=o.prolonged,
        opaque=o.opaque,
        redacted=not visible and not o.opaque,
    )


def pending_out(i: Intent, caller: Caller) -> PendingPlacementOut:
    visible = caller.sees(i.partner)
    return PendingPlacementOut(
        intent_id=i.id,
        rank=i.rank,
        third_guid=i.holder if visible else None,
        partner_guid=i.partner if visible else None,
        created_at=i.created_at,
        redacted=not visible,
    )


def allowed_actions(lot: Lot) -> list[Action]:
    """What the chart would let a caller try on this lot now (prospect rules aside)."""
    occupied = lot.occupied
    place_config = (
        ("free", "one_option", "two_options")[min(2, occupied)]
        if lot.config in ("free", *tr.OPTIONED)
        else lot.config
    )
    held = bool(lot.options)
    checks: list[tuple[Action, str, str, dict[str, bool | str]]] = [
        ("place", place_config, "place", {"full": lot_full(occupied)}),
        (
            "prolong",
            lot.config,
            "prolong",
            {"option_found": any(not o.prolonged for o in lot.options), "holder_matches": True},
        ),
        ("cancel", lot.config, "cancel", {"option_found": held, "holder_matches": True}),
        ("prereserve", lot.config, "prereserve", {}),
        (
            "withdraw",
            lot.config,
            "withdraw",
            {"holder_matches": True, "has_options": held, "has_two_options": len(lot.options) > 1},
        ),
    ]
    out: list[Action] = []
    for action, config, event, facts in checks:
        try:
            decide(config, event, facts)
        except RuleViolation:
            continue
        out.append(action)
    return out


def lot_out(lot: Lot, caller: Caller) -> LotOut:
    pre = lot.prereservation
    pre_out = None
    if pre is not None:
        visible = caller.sees(pre.partner)
        pre_out = PrereservationOut(
            third_guid=pre.holder if visible else None,
            partner_guid=pre.partner if visible else None,
            price=pre.price_cents / 100,
            deposit=pre.deposit_cents / 100,
            at=pre.at,
            redacted=not visible,
            validated=pre.validated,
        )
    return LotOut(
        extcode=lot.extcode,
        status=lot.status,
        state_path=list(STATE_PATH.get(lot.config, (lot.config,))),
        version=lot.version,
        program=lot.program,
        label=lot.label,
        secondary=lot.secondary,
        link=lot.link,
        modified_at=lot.modified_at or None,
        options=[option_out(lot.extcode, o, caller) for o in sorted(lot.options, key=_rank)],
        pending_placements=[pending_out(i, caller) for i in sorted(lot.intents, key=_rank)],
        prereservation=pre_out,
        next_tick=lot.next_expiry(),
        allowed_actions=allowed_actions(lot),
    )


def _rank(x: Option | Intent) -> int:
    return x.rank


def redact_event(event: dict[str, Any], caller: Caller) -> dict[str, Any]:
    data = event.get("data")
    if (
        isinstance(data, dict)
        and data.get("thirdGuid") is not None
        and not caller.sees(cast(str | None, data.get("partnerGuid")))
    ):
        event = {**event, "data": {**data, "thirdGuid": None, "partnerGuid": None}}
        event["data"]["redacted"] = True
    return event


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


def _held(lot: Lot, third: str | None) -> tuple[int, int]:
    """(options + intents of `third`, options + intents through the API user) on `lot`."""
    prospect = sum(o.holder == third for o in lot.options) + sum(
        i.holder == third for i in lot.intents
    )
    user = sum(o.via_api for o in lot.options) + len(lot.intents)
    return prospect, user


def _counted(rules: Rules, third: str | None) -> bool:
    """Can a stored count change the answer (a prospect asked for, or a per-user limit)?"""
    return third is not None or rules.max_options_per_user is not None


def local_result(lot: Lot | None) -> tuple[int, int, int | None]:
    """GetLotStatus as the service sees the lot: (result, maxRank, endDate)."""
    if lot is None:
        return -1, 0, None
    held = sorted(lot.options, key=_rank)
    end = held[0].expiry if held else None
    if lot.config == "free":
        return 0, 0, None
    if lot.config == "one_option":
        return 1, 1, end
    if lot.config == "two_options":
        return -3, 2, end
    if lot.config == "prereserved":
        return -2, len(held), end
    return -4, 0, None


def availability(
    lot: Lot | None,
    extcode: str,
    rules: Rules,
    now: int,
    third: str | None,
    prospect_count: int,
    user_count: int,
) -> dict[str, Any]:
    """The availability answer as JSON: exactly ``dump(AvailabilityOut(...))`` (a test
    checks it), built directly because this is the API's hottest read."""
    result, max_rank, end = local_result(lot)
    can_place, next_rank = False, None
    reason: str | None = ErrorCode.LOT_UNKNOWN.value
    if lot is not None:
        # What reserving would answer (the same rules, nothing reserved, nothing raised).
        refusal = tr.placement_refusal(
            lot,
            third or _PROBE_HOLDER,
            None,
            rules,
            prospect_count if third else 0,
            user_count,
        )
        if refusal is not None:
            reason = refusal.value
        else:
            can_place, next_rank, reason = True, lot.occupied + 1, None
    return {
        "extcode": extcode,
        "result": result,
        "maxRank": max_rank,
        "endDate": to_iso(end) if end is not None else None,
        "canPlace": can_place,
        "nextRank": next_rank,
        "reason": reason,
        "status": lot.status if lot is not None else None,
        "koban": None,
        "drift": None,
    }


def _drift(local: int, lot: Lot | None, status: LotStatus, caller: Caller, now: int) -> bool:
    """Does Koban's GetLotStatus disagree with the lot as we hold it?"""
    theirs = koban_occupancy(status)
    full = status.result == 1 and theirs is not None and lot_full(theirs)
    koban = -3 if full else status.result
    if local == -4:  # RESV / BLOQUE / sold / custom: Koban reports no option (0)
        return koban not in (0, -4)
    if koban == local:
        return False
    ours = len(lot.options) if lot is not None else 0
    # Right after a tick Koban may still report options we have expired: its lag.
    lag = theirs is not None and theirs > ours and in_drift_tolerance(caller.tenant, now)
    return not lag


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
    counted = _counted(rules, third)
    fast = request.app.get(FAST_READS)
    # Without a count that can change the answer (no prospect, no per-user limit): the lot
    # alone.
    raw, user, prospect = await raw_lot_with_counts(store, extcode, fast, third, counted)
    answers = request.app.get(ANSWERS)
    if answers is not None and koban is None and third is None and raw is not None:
        body = remembered_body(answers, tenant.name, extcode, raw, rules, now, user)
        return web.Response(body=body, content_type="application/json")
    lot, answer = local_availability(extcode, raw, rules, now, third, prospect, user)
    if koban is not None:
        status = await koban.get_lot_status(extcode)
        answer["koban"] = dump(
            KobanStatusOut(result=status.result, max_rank=status.max_rank, end_date=status.end_date)
        )
        answer["drift"] = _drift(answer["result"], lot, status, caller, now)
    return json_response(answer)


def remembered_body(
    answers: AvailabilityAnswers,
    tenant: str,
    extcode: str,
    raw: bytes,
    rules: Rules,
    now: int,
    user: int,
) -> bytes:
    """The local answer for no particular prospect, as JSON: the one remembered for this
    stored value, count and instant (`AvailabilityAnswers`), else judged and remembered."""
    body = answers.get(tenant, extcode, raw, user, rules, now)
    if body is None:
        lot, answer = local_availability(extcode, raw, rules, now, None, 0, user)
        body = orjson.dumps(answer)
        assert lot is not None  # decoded from `raw`
        answers.put(tenant, extcode, raw, user, rules, now, lot.next_expiry(), body)
    return body


def local_availability(
    extcode: str,
    raw: bytes | None,
    rules: Rules,
    now: int,
    third: str | None,
    prospect: int,
    user: int,
) -> tuple[Lot | None, dict[str, Any]]:
    """The lot as of `now` (lazy expiry) and the availability answer judged on it, from its
    stored value and the stored counts of `third` and of the API user."""
    lot = decode_lot(extcode, raw) if raw is not None else None
    if lot is not None:
        # Options lazily expired on this lot no longer count (as a write would judge it).
        counted = _counted(rules, third)
        before = _held(lot, third) if counted else (0, 0)
        tr.expire_due(lot, now, rules)
        if counted:
            after = _held(lot, third)
            prospect -= before[0] - after[0]
            user -= before[1] - after[1]
    return lot, availability(lot, extcode, rules, now, third, prospect, user)


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


def _status_filter(text: str | None) -> set[str] | None:
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
    tenant = caller.tenant
    store = tenant.store
    now = tenant.clock.now()
    statuses = _status_filter(query.status)
    position: Position
    if query.cursor is not None:
        position = decode_cursor(query.cursor)
    elif query.modified_after is not None:
        position = (query.modified_after, None)
    else:
        position = START
    items: list[LotOut] = []
    scanned = 0
    exhausted = False
    while len(items) < query.limit and scanned < SCAN_BUDGET:
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
            if statuses is not None and lot.status.upper() not in statuses:
                continue
            if query.program is not None and lot.program != query.program:
                continue
            if query.expiring_before is not None:
                expiry = lot.next_expiry()
                if expiry is None or expiry >= query.expiring_before:
                    continue
            items.append(lot_out(lot, caller))
            if len(items) >= query.limit:
                break
        if len(batch) < SCAN_BATCH and consumed == len(batch):
            exhausted = True
            break
    cursor = None if exhausted else encode_cursor(position)
    return json_response(dump(LotListOut(items=items, next_cursor=cursor)))
