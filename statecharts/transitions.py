"""What each business event does to a lot's data, after the chart has allowed it.

Every transition (1) computes the guard facts from the lot's data, (2) asks the chart's
compiled form (`decide`) for the target configuration or the refusal, and only then
(3) changes the lot in place and returns the events to publish. The chart is the single
source of truth for *whether* and *where*; the transitions only say *how the data follows*.

Functions mutate the `Lot` they are given: callers work on a freshly decoded copy and
throw it away when the atomic write loses a race. This module is the one door callers use
(`from statecharts import transitions as tr`); each concept lives in its own module.
"""

from __future__ import annotations

from statecharts.lot_data import OPTIONED, option_data
from statecharts.option_ends import (
    cancel_option,
    expire_due,
    expiring_notices,
    notice_due_at,
    prolong_option,
    supersede_options,
)
from statecharts.placement import (
    confirm_placement,
    find_intent,
    place_facts,
    place_option,
    placement_refusal,
    release_intent,
    reserve_placement,
)
from statecharts.reservation import prereserve, validate_reservation, withdraw
from statecharts.status_sync import occupancy_invariant, sync_status

__all__ = [
    "OPTIONED",
    "cancel_option",
    "confirm_placement",
    "expire_due",
    "expiring_notices",
    "find_intent",
    "notice_due_at",
    "occupancy_invariant",
    "option_data",
    "place_facts",
    "place_option",
    "placement_refusal",
    "prereserve",
    "prolong_option",
    "release_intent",
    "reserve_placement",
    "supersede_options",
    "sync_status",
    "validate_reservation",
    "withdraw",
]
