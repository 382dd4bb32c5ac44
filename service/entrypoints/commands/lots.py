"""`lot` (a lot's state and history, `--resync` with Koban) and `intents` (pending
placement intents, resolving one by asking Koban).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from service.entrypoints.commands.common import (
    age_text,
    clock_json,
    clock_mark,
    operator_caller,
    print_json,
    setup_for,
    unknown_tenant,
    with_koban,
    with_tenants,
)
from service.entrypoints.commands.exit_codes import NOT_FOUND, OK, USAGE
from service.tenancy import Tenant, Tenants
from service.usecases.intents import list_pending, resolve_one
from service.usecases.sync import reconcile_lot
from statecharts.errors import RuleViolation
from statecharts.model import Lot
from statecharts.ticks import next_tick, to_iso

RESYNC_OUTCOMES = {
    "agreed": "agreed (Koban and the service say the same)",
    "fixed": "fixed (local state now follows Koban; drift recorded)",
    "drift": "drift recorded (Koban disagrees in a way only a stock sync can fix)",
    "deferred": "deferred (the lot is changing or within the drift tolerance of a tick)",
    "unknown_lot": "Koban does not know this lot (drift recorded)",
}


async def _resync_lot(tenant: Tenant, extcode: str, out: TextIO) -> int:
    """Reconcile one lot with Koban now (GetLotStatus); prints the outcome."""
    outcome = await with_koban(
        tenant, lambda koban: reconcile_lot(tenant, koban, extcode, tenant.clock.now())
    )
    if isinstance(outcome, int):
        return outcome
    print(f"resync {extcode}: {RESYNC_OUTCOMES.get(outcome, outcome)}", file=out)
    return OK


async def show_lot(tenant_name: str, extcode: str, resync: bool, as_json: bool) -> int:
    setup = setup_for(tenant_name)
    if unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def show(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        if resync and await tenant.store.load(extcode) is not None:
            code = await _resync_lot(tenant, extcode, sys.stderr if as_json else sys.stdout)
            if code:
                return code
        now = tenant.clock.now()
        lot = await tenant.store.read(extcode, now)
        if lot is None:
            print(f"lot {extcode} is unknown to tenant {tenant_name}", file=sys.stderr)
            return NOT_FOUND
        history = await tenant.store.history(extcode)
        if as_json:
            print_json(_lot_json(tenant, lot, history, now))
            return OK
        print(f"{lot.extcode}  {lot.status}  ({lot.config})  version {lot.version}")
        print(f"now {to_iso(now)}{clock_mark(tenant)}   next tick {to_iso(next_tick(now))}")
        for o in sorted(lot.options, key=lambda o: o.rank):
            expiry = to_iso(o.expiry) if o.expiry is not None else "unknown"
            holder = o.holder or "(opaque)"
            flags = " prolonged" if o.prolonged else ""
            print(f"  rank {o.rank}  {holder}  expires {expiry}  [{o.source}]{flags}")
        for i in lot.intents:
            print(f"  pending intent {i.id}: rank {i.rank} for {i.holder}")
        if lot.prereservation:
            print(f"  préréservation by {lot.prereservation.holder}")
        print("history:")
        for event in history:
            print(f"  {event['time']}  {event['type']}  v{event['lotversion']}")
        return OK

    return await with_tenants(setup.settings, show)


def _lot_json(tenant: Tenant, lot: Lot, history: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """``{"lot", "history", "clock"}``: the first two exactly as ``GET …/lots/{extcode}``
    and ``GET …/lots/{extcode}/history`` answer an admin token."""
    from service.entrypoints.api.models import HistoryOut, dump
    from service.entrypoints.api.routes_lots import lot_out, redact_event

    caller = operator_caller(tenant)
    items = [redact_event(e, caller) for e in history]
    return {
        "lot": dump(lot_out(lot, caller)),
        "history": dump(HistoryOut(extcode=lot.extcode, items=items)),
        "clock": clock_json(tenant, now),
    }


async def _list_intents(tenant: Tenant, as_json: bool) -> int:
    from service.entrypoints.api.models import PendingPlacementOut, dump

    now = tenant.clock.now()
    pending = await list_pending(tenant)
    if as_json:
        # Each item is a lot answer's `pendingPlacements` entry, with the lot's extcode.
        items = [
            {
                "extcode": p.extcode,
                **dump(
                    PendingPlacementOut(
                        intent_id=p.intent_id,
                        rank=p.rank,
                        third_guid=p.third,
                        partner_guid=p.partner,
                        created_at=p.created_at,
                    )
                ),
            }
            for p in pending
        ]
        print_json({"items": items, "clock": clock_json(tenant, now)})
        return OK
    if not pending:
        print(f"{tenant.name}: no pending intents at {to_iso(now)}{clock_mark(tenant)}")
        return OK
    print(f"{'intent':<14} {'lot':<16} {'rank':>4}  {'third':<26} {'age':>7}  created")
    for p in pending:
        print(
            f"{p.intent_id:<14} {p.extcode:<16} {p.rank:>4}  {p.third:<26} "
            f"{age_text(now - p.created_at):>7}  {to_iso(p.created_at)}"
        )
    print(
        f"{len(pending)} pending at {to_iso(now)}{clock_mark(tenant)}; "
        f"resolve one: koban-options intents {tenant.name} --resolve=ID"
    )
    return OK


async def _resolve_intent(tenant: Tenant, intent_id: str) -> int:
    try:
        res = await with_koban(
            tenant, lambda koban: resolve_one(tenant, koban, None, intent_id, tenant.clock.now())
        )
    except RuleViolation:
        print(f"no pending intent {intent_id} in tenant {tenant.name}", file=sys.stderr)
        return NOT_FOUND
    if isinstance(res, int):
        return res
    print(f"intent {res.intent_id} on {res.extcode} (rank {res.rank}, {res.third}): {res.outcome}")
    option = res.option
    if option is not None:
        expiry = to_iso(option.expiry) if option.expiry is not None else "unknown"
        mark = clock_mark(tenant)
        print(f"  option {option.id}: rank {option.rank}, expires {expiry}{mark} [{option.source}]")
    return OK


async def intents(tenant_name: str, resolve: str | None, as_json: bool) -> int:
    setup = setup_for(tenant_name)
    if unknown_tenant(setup.settings, tenant_name):
        return USAGE

    async def act(tenants: Tenants) -> int:
        tenant = tenants[tenant_name]
        if resolve is None:
            return await _list_intents(tenant, as_json)
        return await _resolve_intent(tenant, resolve)

    return await with_tenants(setup.settings, act)
