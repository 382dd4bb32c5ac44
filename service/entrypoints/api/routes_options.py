"""Option routes: listings (options across lots, a prospect's options and allowance) and
the writes that go through Koban (place, prolong, cancel, pre-reserve, withdraw).

Writes run through the tenant's `OptionFlows` (reserve → call Koban → confirm, docs/flows.md) under
`idempotent`. A partner token acts only as its partner: it places and pre-reserves with
its own ``partnerGuid`` (another one → 403), and prolongs, cancels or withdraws only what
its partner placed (403 otherwise). For options addressed by rank, the prospect found at
that rank is handed to the flow as ``thirdGuid`` when the caller gave none, so the
partner check holds under the lot's revision (the rank moving meanwhile → OPTION_MOVED).
What each route documents and parses (its `Operation`) is `option_operations.py`.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from aiohttp import web

from service.entrypoints.api.auth import Caller, forbid_partner
from service.entrypoints.api.context import authenticate, flows_for
from service.entrypoints.api.errors import FORBIDDEN, PLACEMENT_NOT_MADE, ApiError, json_response
from service.entrypoints.api.idempotency import idempotent
from service.entrypoints.api.models import (
    OptionListOut,
    OptionOut,
    PendingOut,
    ProspectOut,
    canonical_body,
    cents,
    dump,
    rank_of,
)
from service.entrypoints.api.openapi import (
    documented,
)
from service.entrypoints.api.option_operations import (
    CANCEL_OPTION,
    GET_PROSPECT,
    LIST_OPTIONS,
    PLACE_OPTION,
    PRERESERVE,
    PROLONG_OPTION,
    WITHDRAW,
)
from service.entrypoints.api.paging import Position, decode_cursor, encode_cursor
from service.entrypoints.api.routes_lots import BASE, LOT, lot_out, option_out, read_lot
from service.koban import KobanError, is_unknown_prospect
from service.storage.codec import decode_lot
from service.storage.lot_reads import intent_lots, raw_lots
from service.storage.paging import expiries_after
from service.tenancy import Tenant
from service.usecases.flows import Placed
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Lot, Option

__all__ = ["routes"]

routes = web.RouteTableDef()

SCAN_BATCH = 200
SCAN_BUDGET = 5000
_OPTION_FIELDS = (
    "optionId",
    "rank",
    "thirdGuid",
    "partnerGuid",
    "placedAt",
    "deadline",
    "effectiveExpiry",
    "deadlineSource",
    "prolonged",
)


class _ProspectUnknown(RuleViolation):
    """Koban does not know the prospect (its Add answers 404 with no documented code)."""

    source = "koban"


# --------------------------------------------------------------------------- listings


async def _options_after(
    tenant: Tenant, position: Position, count: int, now: int
) -> tuple[list[tuple[Position, Lot | None, Option | None]], bool]:
    """The next `count` entries of the expiry index, each with its lot and active option
    (None when the entry is stale or lazily expired); True when the index is exhausted."""
    store = tenant.store
    batch = await expiries_after(store, position, count)
    codes = sorted({member.rpartition("/")[0] for member, _ in batch})
    raws = await raw_lots(store, codes)
    lots: dict[str, Lot] = {}
    for code, raw in zip(codes, raws, strict=True):
        if raw is not None:
            lot = decode_lot(code, raw)
            tr.expire_due(lot, now, tenant.rules)
            lots[code] = lot
    out: list[tuple[Position, Lot | None, Option | None]] = []
    for member, score in batch:
        code, _, oid = member.rpartition("/")
        held = lots.get(code)
        option = next((o for o in held.options if o.id == oid), None) if held else None
        out.append(((score, member), held, option))
    return out, len(batch) < count


@routes.get(BASE + "/options")
@documented(LIST_OPTIONS)
async def list_options(request: web.Request) -> web.Response:
    """Active options across lots, soonest expiry first (options whose expiry Koban never
    gave — opaque placeholders without a date — are not in the expiry index)."""
    caller = authenticate(request, "read")
    query = LIST_OPTIONS.parse_query(request)
    tenant = caller.tenant
    now = tenant.clock.now()
    position = decode_cursor(query.cursor) if query.cursor else (now, None)
    items: list[OptionOut] = []
    scanned = 0
    done = False
    while not done and len(items) < query.limit and scanned < SCAN_BUDGET:
        entries, exhausted = await _options_after(tenant, position, SCAN_BATCH, now)
        consumed = 0
        for at, lot, option in entries:
            if query.expiring_before is not None and at[0] >= query.expiring_before:
                done = True
                break
            consumed += 1
            scanned += 1
            position = at
            if lot is None or option is None:
                continue
            if query.third_guid is not None and option.holder != query.third_guid:
                continue
            if query.partner_guid is not None and option.partner != query.partner_guid:
                continue
            items.append(option_out(lot.extcode, option, caller))
            if len(items) >= query.limit:
                break
        if exhausted and consumed == len(entries):
            done = True
    cursor = None if done else encode_cursor(position)
    return json_response(dump(OptionListOut(items=items, next_cursor=cursor)))


@routes.get(BASE + "/prospects/{third}")
@documented(GET_PROSPECT)
async def get_prospect(request: web.Request) -> web.Response:
    """The prospect's active options, pending placements and remaining allowance (as of
    now, lazy expiry applied)."""
    caller = authenticate(request, "read")
    GET_PROSPECT.parse_query(request)
    third = request.match_info["third"]
    tenant = caller.tenant
    store = tenant.store
    now = tenant.clock.now()
    counted = (await store.counts(third)).prospect
    # Pending placements (few) from the intents index.
    pending: list[dict[str, Any]] = []
    codes = await intent_lots(store)
    raws = await raw_lots(store, codes)
    for code, raw in zip(codes, raws, strict=True):
        if raw is None:
            continue
        for intent in decode_lot(code, raw).intents:
            if intent.holder == third:
                visible = caller.sees(intent.partner)
                pending.append(
                    {
                        "extcode": code,
                        "intentId": intent.id,
                        "rank": intent.rank,
                        "partnerGuid": intent.partner if visible else None,
                        "redacted": not visible,
                    }
                )
    # Options: the expiry index, until as many as the counts say were found.
    options: list[OptionOut] = []
    position: Position = (now, None)
    while counted and len(options) + len(pending) < counted:
        entries, exhausted = await _options_after(tenant, position, SCAN_BATCH, now)
        for at, lot, option in entries:
            position = at
            if lot is not None and option is not None and option.holder == third:
                options.append(option_out(lot.extcode, option, caller))
        if exhausted:
            break
    limit = tenant.rules.max_options_per_prospect
    answer = ProspectOut(
        third_guid=third,
        options=options,
        pending_placements=pending,
        max_options=limit,
        remaining=max(0, limit - len(options) - len(pending)),
    )
    return json_response(dump(answer))


# --------------------------------------------------------------------------- placement


def _pending_body(extcode: str, intent_id: str, rank: int | None, third: str) -> dict[str, Any]:
    out = PendingOut(
        status="pending", intent_id=intent_id, extcode=extcode, rank=rank or None, third_guid=third
    )
    return dump(out)


@routes.post(LOT + "/options")
@documented(PLACE_OPTION)
async def place_option(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, raw = await PLACE_OPTION.parse_body(request)
    extcode = request.match_info["extcode"]
    partner = body.partner_guid
    if caller.partner is not None:
        if partner is not None and partner != caller.partner:
            raise ApiError(403, FORBIDDEN, "A partner token places only as its own partner.")
        partner = caller.partner

    async def action() -> web.Response:
        flows = flows_for(request, caller)
        try:
            result = await flows.place(extcode, body.third_guid, partner, body.rank)
        except KobanError as exc:
            if is_unknown_prospect(exc):
                raise _ProspectUnknown(
                    ErrorCode.PROSPECT_UNKNOWN, "Koban does not know this prospect."
                ) from exc
            raise
        if isinstance(result, Placed):
            return json_response(dump(option_out(extcode, result.option, caller)), 201)
        return json_response(
            _pending_body(extcode, result.intent_id, result.rank, result.third), 202
        )

    return await idempotent(request, caller, canonical_body(raw), action, _refresh_placement)


async def _refresh_placement(
    request: web.Request, caller: Caller, record: dict[str, Any]
) -> web.Response:
    """A stored 202: the intent's state now — still pending (202), placed (201 with the
    option), or not placed (409 PLACEMENT_NOT_MADE)."""
    stored = orjson.loads(cast(str, record["body"]))
    extcode, iid, third = stored["extcode"], stored["intentId"], stored["thirdGuid"]
    tenant = caller.tenant
    lot = await tenant.store.read(extcode, tenant.clock.now())
    if lot is not None and tr.find_intent(lot, iid) is not None:
        intent = tr.find_intent(lot, iid)
        assert intent is not None
        return json_response(_pending_body(extcode, iid, intent.rank, third), 202)
    history = await tenant.store.history(extcode)
    resolved = next(
        (
            e["data"]
            for e in reversed(history)
            if e["type"] == "koban.intent.resolved" and e["data"].get("intentId") == iid
        ),
        None,
    )
    if resolved is not None and resolved.get("outcome") == "placed":
        oid = resolved.get("optionId")
        active = next((o for o in lot.options if o.id == oid), None) if lot else None
        if active is not None:
            return json_response(dump(option_out(extcode, active, caller)), 201)
        placed = next(
            (
                e["data"]
                for e in history
                if e["type"] == "koban.option.placed" and e["data"].get("optionId") == oid
            ),
            None,
        )
        if placed is not None:  # ended since: the option as it was placed
            fields = {k: placed.get(k) for k in _OPTION_FIELDS}
            fields.update(extcode=extcode, opaque=False, redacted=False)
            return json_response(fields, 201)
    if resolved is None or resolved.get("outcome") == "placed":  # history no longer tells
        body = _pending_body(extcode, iid, stored.get("rank"), third)
        body["status"] = "unknown"
        return json_response(body, 202)
    raise ApiError(
        409,
        PLACEMENT_NOT_MADE,
        f"Koban did not place this option (intent {iid}: {resolved.get('outcome')}).",
        source="koban",
    )


# --------------------------------------------------------------------------- by rank


async def _holder_for(caller: Caller, extcode: str, rank: int, third: str | None) -> str | None:
    """For a partner token: 403 unless the option at `rank` is its partner's; returns the
    holder to pin the flow's check to. Other tokens: `third` unchanged."""
    if caller.partner is None:
        return third
    lot = await read_lot(caller, extcode)
    option = lot.option_at(rank)
    if option is None or (third is not None and option.holder != third):
        return third  # the flow answers OPTION_NOT_FOUND / OPTION_MOVED, nothing sent
    forbid_partner(caller, option.partner, "another partner's option")
    return option.holder


@routes.post(LOT + "/options/{rank}/prolongation")
@documented(PROLONG_OPTION)
async def prolong_option(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    rank = rank_of(request)
    body, raw = await PROLONG_OPTION.parse_body(request)
    extcode = request.match_info["extcode"]

    async def action() -> web.Response:
        flows = flows_for(request, caller)
        third = await _holder_for(caller, extcode, rank, body.third_guid)
        option = await flows.prolong(extcode, rank, body.until, third)
        return json_response(dump(option_out(extcode, option, caller)))

    return await idempotent(request, caller, canonical_body(raw), action)


@routes.delete(LOT + "/options/{rank}")
@documented(CANCEL_OPTION)
async def cancel_option(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    rank = rank_of(request)
    query = CANCEL_OPTION.parse_query(request)
    extcode = request.match_info["extcode"]

    async def action() -> web.Response:
        flows = flows_for(request, caller)
        third = await _holder_for(caller, extcode, rank, query.third_guid)
        option = await flows.cancel(extcode, rank, third)
        return json_response(dump(option_out(extcode, option, caller)))

    canonical = canonical_body(None, dict(request.rel_url.query))
    return await idempotent(request, caller, canonical, action)


# --------------------------------------------------------------------------- préréservation


@routes.post(LOT + "/prereservation")
@documented(PRERESERVE)
async def prereserve(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, raw = await PRERESERVE.parse_body(request)
    extcode = request.match_info["extcode"]
    partner = body.partner_guid
    if caller.partner is not None:
        if partner is not None and partner != caller.partner:
            raise ApiError(403, FORBIDDEN, "A partner token acts only as its own partner.")
        partner = caller.partner

    async def action() -> web.Response:
        flows = flows_for(request, caller)
        lot = await flows.prereserve(
            extcode, body.third_guid, cents(body.price), cents(body.deposit), partner
        )
        return json_response(dump(lot_out(lot, caller)), 201)

    return await idempotent(request, caller, canonical_body(raw), action)


@routes.post(LOT + "/prereservation/withdrawal")
@documented(WITHDRAW)
async def withdraw(request: web.Request) -> web.Response:
    caller = authenticate(request, "write")
    body, raw = await WITHDRAW.parse_body(request)
    extcode = request.match_info["extcode"]

    async def action() -> web.Response:
        flows = flows_for(request, caller)
        if caller.partner is not None:
            lot = await read_lot(caller, extcode)
            pre = lot.prereservation
            if pre is not None and pre.holder == body.third_guid:
                forbid_partner(caller, pre.partner, "another partner's préréservation")
        lot = await flows.withdraw(extcode, body.third_guid)
        return json_response(dump(lot_out(lot, caller)))

    return await idempotent(request, caller, canonical_body(raw), action)
