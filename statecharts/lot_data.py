"""The pieces every transition shares: an option event's `data`, and setting a lot's
configuration (its status follows, except for Koban's custom statuses).

Transitions call `lot_data.option_data` through the module so that one replacement (a test
changing the events' shape) reaches them all.
"""

from __future__ import annotations

from statecharts.model import STATUS_OF_CONFIG, Actor, Lot, Option

OPTIONED = ("one_option", "two_options")


def option_data(o: Option, actor: Actor, **extra: object) -> dict[str, object]:
    """The `data` of every option event; instants stay integers until the wire."""
    data: dict[str, object] = {
        "optionId": o.id,
        "rank": o.rank,
        "thirdGuid": o.holder,
        "partnerGuid": o.partner,
        "placedAt": o.placed_at,
        "deadline": o.deadline,
        "effectiveExpiry": o.expiry,
        "deadlineSource": o.source,
        "prolonged": o.prolonged,
        "actor": actor,
    }
    data.update(extra)
    return data


def set_config(lot: Lot, config: str) -> None:
    lot.config = config
    if config != "custom":
        lot.status = STATUS_OF_CONFIG[config]


def optioned_config(n: int) -> str:
    return ("free", "one_option", "two_options")[n]
