"""The availability answer (GetLotStatus as the service sees the lot, and whether an option
can be placed now): judged on the lot as of now (lazy expiry) with the rules a reservation
would apply, remembered per stored value for callers naming no prospect, and compared with
Koban's own answer when asked. The route is `routes_lots.get_availability`.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.entrypoints.api.answers import AvailabilityAnswers
from service.entrypoints.api.auth import Caller
from service.entrypoints.api.lot_views import by_rank
from service.koban import LotStatus
from service.storage.codec import decode_lot
from service.usecases.sync import in_drift_tolerance, koban_occupancy
from statecharts import transitions as tr
from statecharts.capacity import lot_full
from statecharts.errors import ErrorCode
from statecharts.model import Lot, Rules
from statecharts.ticks import to_iso

_PROBE_HOLDER = "\x00probe"  # matches no prospect: availability without prospect rules


def _held(lot: Lot, third: str | None) -> tuple[int, int]:
    """(options + intents of `third`, options + intents through the API user) on `lot`."""
    prospect = sum(o.holder == third for o in lot.options) + sum(
        i.holder == third for i in lot.intents
    )
    user = sum(o.via_api for o in lot.options) + len(lot.intents)
    return prospect, user


def counted_rules(rules: Rules, third: str | None) -> bool:
    """Can a stored count change the answer (a prospect asked for, or a per-user limit)?"""
    return third is not None or rules.max_options_per_user is not None


def local_result(lot: Lot | None) -> tuple[int, int, int | None]:
    """GetLotStatus as the service sees the lot: (result, maxRank, endDate)."""
    if lot is None:
        return -1, 0, None
    held = sorted(lot.options, key=by_rank)
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


def drift(local: int, lot: Lot | None, status: LotStatus, caller: Caller, now: int) -> bool:
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
        counted = counted_rules(rules, third)
        before = _held(lot, third) if counted else (0, 0)
        tr.expire_due(lot, now, rules)
        if counted:
            after = _held(lot, third)
            prospect -= before[0] - after[0]
            user -= before[1] - after[1]
    return lot, availability(lot, extcode, rules, now, third, prospect, user)
