"""A lot as the API shows it: the lot, its options, pending placements and préréservation
(a partner's caller sees other partners' prospects redacted), the actions the chart would
allow now, and events redacted the same way."""

from __future__ import annotations

from typing import Any, cast

from service.entrypoints.api.auth import Caller
from service.entrypoints.api.models import (
    Action,
    LotOut,
    OptionOut,
    PendingPlacementOut,
    PrereservationOut,
)
from statecharts import transitions as tr
from statecharts.capacity import lot_full
from statecharts.decide import decide
from statecharts.errors import RuleViolation
from statecharts.lot_chart import STATE_PATH
from statecharts.model import Intent, Lot, Option


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
        options=[option_out(lot.extcode, o, caller) for o in sorted(lot.options, key=by_rank)],
        pending_placements=[pending_out(i, caller) for i in sorted(lot.intents, key=by_rank)],
        prereservation=pre_out,
        next_tick=lot.next_expiry(),
        allowed_actions=allowed_actions(lot),
    )


def by_rank(x: Option | Intent) -> int:
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
