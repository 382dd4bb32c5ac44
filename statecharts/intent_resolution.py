"""How a pending placement intent is settled: placed, not placed, or dropped.

An intent is pending when ``ncOption/Add`` was sent and no answer came. Settling it is one
transition: the placement's own events (``option.placed``, or a promotion after a
release) and ``intent.resolved``. The callers (the resolver asking ``GetLotStatus``, the
option-placed webhook) bring what Koban said; this module only decides.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from statecharts import transitions as tr
from statecharts.drift import drift_event
from statecharts.errors import RuleViolation
from statecharts.model import Actor, DomainEvent, Intent, Lot, Option, Rules

__all__ = [
    "Outcome",
    "Resolution",
    "rank_outcome",
    "resolved_event",
    "settle",
    "webhook_resolution",
]

Outcome = Literal["placed", "not_placed", "dropped"]


@dataclass(frozen=True, slots=True)
class Resolution:
    extcode: str
    intent_id: str
    outcome: Outcome
    rank: int
    third: str
    option: Option | None = None


def rank_outcome(occupied: int | None, rank: int) -> Outcome:
    """Koban counts `occupied` options (None: it did not say): is the intent's `rank`
    among them? GetLotStatus counts options, not holders: an occupied rank is ours."""
    return "placed" if occupied is not None and occupied >= rank else "not_placed"


def resolved_event(
    intent: Intent, outcome: Outcome, now: int, actor: Actor, option: Option | None = None
) -> DomainEvent:
    data: dict[str, object] = {
        "intentId": intent.id,
        "outcome": outcome,
        "rank": intent.rank,
        "thirdGuid": intent.holder,
        "partnerGuid": intent.partner,
    }
    if option is not None:
        data["optionId"] = option.id
    data["actor"] = actor
    return DomainEvent("intent.resolved", now, data)


def settle(
    lot: Lot,
    intent_id: str,
    outcome: Outcome,
    now: int,
    rules: Rules,
    *,
    option_id: str,
    actor: Actor,
    placed_at: int | None = None,
    koban_deadline: int | None = None,
    koban: Mapping[str, object] | None = None,
) -> tuple[list[DomainEvent], Resolution | None]:
    """The transition resolving one intent of `lot` (mutated in place); a placed intent
    becomes option `option_id`. `koban` (Koban's answer, as event data) goes into the drift
    event of a dropped intent. None when the intent is not pending any more."""
    intent = tr.find_intent(lot, intent_id)
    if intent is None:
        return [], None
    seen = copy.copy(intent)
    events: list[DomainEvent] = []
    option: Option | None = None
    if outcome == "placed":
        trial = copy.deepcopy(lot)
        when = intent.created_at if placed_at is None else placed_at
        try:
            tr.confirm_placement(trial, intent_id, option_id, when, rules, koban_deadline, actor)
        except RuleViolation:
            outcome = "dropped"  # the lot cannot hold it any more (e.g. synced to RESV)
        else:
            events = tr.confirm_placement(
                lot, intent_id, option_id, when, rules, koban_deadline, actor
            )
            option = next(o for o in lot.options if o.id == option_id)
    if outcome != "placed":
        events = tr.release_intent(lot, intent_id, now, rules)
    if outcome == "dropped":
        data: dict[str, object] = {"intentId": intent_id, "rank": seen.rank}
        data["thirdGuid"] = seen.holder
        if koban is not None:
            data.update(koban)
        events.append(drift_event(now, actor, "intent_unresolved", **data))
    events.append(resolved_event(seen, outcome, now, actor, option))
    return events, Resolution(lot.extcode, intent_id, outcome, seen.rank, seen.holder, option)


def webhook_resolution(
    lot: Lot,
    third: str,
    exp_date: int | None,
    now: int,
    rules: Rules,
    *,
    option_id: str,
) -> tuple[list[DomainEvent], Resolution] | None:
    """For the option-placed webhook: when `third` has a pending intent on `lot`, confirm
    it (deadline = Koban's ExpDate, ``deadlineSource: koban``; placedAt = the intent's
    creation ≈ the DateOption we sent) and return its events, ``intent.resolved``
    included; None when there is no such intent (a placement made in Koban)."""
    intent = next((i for i in lot.intents if i.holder == third), None)
    if intent is None:
        return None
    events, resolution = settle(
        lot,
        intent.id,
        "placed",
        now,
        rules,
        option_id=option_id,
        actor="koban",
        koban_deadline=exp_date,
    )
    assert resolution is not None
    return events, resolution
