"""Préréservation, reservation (Koban's RESV) and désistement (withdrawal) of a lot."""

from __future__ import annotations

from statecharts import lot_data
from statecharts.decide import decide
from statecharts.lot_data import set_config
from statecharts.model import (
    Actor,
    DomainEvent,
    Lot,
    Prereservation,
    Rules,
)
from statecharts.option_ends import compact_ranks, end_options


def prereserve(
    lot: Lot,
    holder: str,
    partner: str | None,
    price_cents: int,
    deposit_cents: int,
    now: int,
    rules: Rules,
    actor: Actor = "api",
    *,
    validated: bool = False,
) -> list[DomainEvent]:
    """The lot goes PRERESV; the same third's option is converted, the others stay.
    `validated`: a complete dossier (AddValid), said in the event's ``validated``."""
    target = decide(lot.config, "prereserve")
    own = lot.option_of(holder)
    events: list[DomainEvent] = []
    set_config(lot, target)
    if own is not None:
        events.extend(end_options(lot, [own], "converted", now, actor, rules))
    lot.prereservation = Prereservation(holder, partner, price_cents, deposit_cents, now, validated)
    data: dict[str, object] = {
        "thirdGuid": holder,
        "partnerGuid": partner,
        "price": price_cents / 100,
        "deposit": deposit_cents / 100,
        "convertedOptionId": own.id if own else None,
        "actor": actor,
    }
    if validated:
        data["validated"] = True
    events.append(DomainEvent("lot.prereserved", now, data))
    return events


def validate_reservation(
    lot: Lot, now: int, rules: Rules, actor: Actor = "koban"
) -> tuple[list[DomainEvent], bool]:
    """RESV whatever the local state; remaining options end superseded.

    Returns the events and whether local state disagreed (was not PRERESV): drift.
    """
    drift = lot.config != "prereserved"
    target = decide(lot.config, "validate_reservation")
    set_config(lot, target)
    events = []
    for o in list(lot.options):
        lot.options.remove(o)
        events.append(DomainEvent("option.superseded", now, lot_data.option_data(o, actor)))
    compact_ranks(lot, now, actor, rules)  # pending intents move down; no option is left
    pre = lot.prereservation
    events.append(
        DomainEvent(
            "lot.reserved",
            now,
            {"thirdGuid": pre.holder if pre else None, "drift": drift, "actor": actor},
        )
    )
    return events, drift


def withdraw(
    lot: Lot, holder: str | None, now: int, rules: Rules, actor: Actor = "api"
) -> list[DomainEvent]:
    """Désistement: back to OPTION if an option is still active (ranks as they stand), else LIBRE.

    `holder=None` (Koban's webhook names no third) skips the holder check.
    """
    pre = lot.prereservation
    matches = holder is None or (pre is not None and pre.holder == holder)
    facts = {
        "holder_matches": matches,
        "has_options": bool(lot.options),
        "has_two_options": len(lot.options) >= 2,
    }
    target = decide(lot.config, "withdraw", facts)
    set_config(lot, target)
    lot.prereservation = None
    return [
        DomainEvent(
            "lot.withdrawn",
            now,
            {"thirdGuid": pre.holder if pre else holder, "actor": actor},
        )
    ]
