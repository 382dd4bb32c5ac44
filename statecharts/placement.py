"""Placement: reserve a rank (an intent) -> Koban places it -> confirm (or release), and an
option Koban placed on its own (webhook, sync placeholder).

The reservation judges prospect and user limits against state plus pending intents; once
Koban has placed the option only the lot's capacity is checked (Koban is the authority).
"""

from __future__ import annotations

from statecharts import lot_data
from statecharts.capacity import lot_full
from statecharts.decide import decide, verdict
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.lot_data import OPTIONED, optioned_config, set_config
from statecharts.model import (
    Actor,
    DeadlineSource,
    DomainEvent,
    Intent,
    Lot,
    Option,
    Rules,
)
from statecharts.option_ends import compact_ranks, expiring_notices
from statecharts.ticks import ceil_tick, deadline_from_lifetime


def place_facts(
    lot: Lot,
    holder: str,
    rank: int | None,
    prospect_count: int,
    user_count: int,
    rules: Rules,
) -> dict[str, bool | str]:
    occupied = lot.occupied
    return {
        "full": lot_full(occupied),
        "prospect_holds": holder in lot.holders(),
        "prospect_at_limit": prospect_count >= rules.max_options_per_prospect,
        "user_at_limit": rules.max_options_per_user is not None
        and user_count >= rules.max_options_per_user,
        "rank_mismatch": rank is not None and rank != occupied + 1,
    }


def _place_config(lot: Lot) -> str:
    """The configuration a placement is judged in: pending intents count as options."""
    if lot.config in OPTIONED or lot.config == "free":
        return optioned_config(min(2, lot.occupied))
    return lot.config


def reserve_placement(
    lot: Lot,
    intent_id: str,
    holder: str,
    partner: str | None,
    rank: int | None,
    now: int,
    rules: Rules,
    prospect_count: int,
    user_count: int,
) -> Intent:
    """Placement step 1: check the rules against state + pending intents, hold the next rank."""
    facts = place_facts(lot, holder, rank, prospect_count, user_count, rules)
    decide(_place_config(lot), "place", facts)
    intent = Intent(intent_id, lot.occupied + 1, holder, partner, now)
    lot.intents.append(intent)
    return intent


def placement_refusal(
    lot: Lot,
    holder: str,
    rank: int | None,
    rules: Rules,
    prospect_count: int,
    user_count: int,
) -> ErrorCode | None:
    """What `reserve_placement` would refuse with, without reserving nor raising (None: it
    would hold rank ``lot.occupied + 1``)."""
    facts = place_facts(lot, holder, rank, prospect_count, user_count, rules)
    kind, value = verdict(_place_config(lot), "place", facts)
    return None if kind == "ok" else ErrorCode(value)


def find_intent(lot: Lot, intent_id: str) -> Intent | None:
    return next((i for i in lot.intents if i.id == intent_id), None)


def release_intent(lot: Lot, intent_id: str, now: int, rules: Rules) -> list[DomainEvent]:
    """Placement step 3 when Koban refused (or never got the call): drop the reservation.

    Unknown intents are ignored (a replayed release). A rank 2 option waiting behind the
    released rank 1 is promoted.
    """
    intent = find_intent(lot, intent_id)
    if intent is None:
        return []
    lot.intents.remove(intent)
    return compact_ranks(lot, now, "api", rules)


def confirm_placement(
    lot: Lot,
    intent_id: str,
    option_id: str,
    placed_at: int,
    rules: Rules,
    koban_deadline: int | None = None,
    actor: Actor = "api",
) -> list[DomainEvent]:
    """Placement step 3 when Koban placed it: the intent becomes an option at its rank."""
    intent = find_intent(lot, intent_id)
    if intent is None:
        raise RuleViolation(ErrorCode.OPTION_NOT_FOUND, f"no pending intent {intent_id}")
    lot.intents.remove(intent)
    return place_option(
        lot,
        option_id=option_id,
        holder=intent.holder,
        partner=intent.partner,
        placed_at=placed_at,
        rules=rules,
        koban_deadline=koban_deadline,
        via_api=True,
        actor=actor,
        rank=intent.rank,
    )


def place_option(
    lot: Lot,
    *,
    option_id: str,
    holder: str | None,
    partner: str | None,
    placed_at: int,
    rules: Rules,
    koban_deadline: int | None = None,
    via_api: bool = False,
    actor: Actor = "koban",
    rank: int | None = None,
) -> list[DomainEvent]:
    """Add an option Koban has placed (confirmed intent, webhook, or sync placeholder).

    Koban is the authority here: prospect/user limits are not re-checked, but the chart
    still refuses a lot that cannot hold one more option.
    """
    facts = {"full": lot_full(lot.occupied)}
    target = decide(lot.config, "place", facts)
    taken = {o.rank for o in lot.options} | {i.rank for i in lot.intents}
    if rank is None or rank in {o.rank for o in lot.options}:
        rank = next(r for r in (1, 2) if r not in taken)
    source: DeadlineSource
    if koban_deadline is not None:
        deadline, source = koban_deadline, "koban"
    else:
        deadline = deadline_from_lifetime(placed_at, rules.option_lifetime, rules.zone)
        source = "estimated"
    option = Option(
        id=option_id,
        rank=rank,
        holder=holder,
        partner=partner,
        placed_at=placed_at,
        deadline=deadline,
        expiry=ceil_tick(deadline),
        source=source,
        original_deadline=deadline,
        via_api=via_api,
    )
    lot.options.append(option)
    lot.options.sort(key=lambda o: o.rank)
    set_config(lot, target)
    events = [DomainEvent("option.placed", placed_at, lot_data.option_data(option, actor))]
    events.extend(compact_ranks(lot, placed_at, actor, rules))
    events.extend(expiring_notices(lot, placed_at, rules, at=placed_at))
    return events
