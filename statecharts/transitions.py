"""What each business event does to a lot's data, after the chart has allowed it.

Every function here (1) computes the guard facts from the lot's data, (2) asks the chart's
compiled form (`decide`) for the target configuration or the refusal, and only then
(3) changes the lot in place and returns the events to publish. The chart is the single
source of truth for *whether* and *where*; this module only says *how the data follows*.

Functions mutate the `Lot` they are given: callers work on a freshly decoded copy and
throw it away when the atomic write loses a race.
"""

from __future__ import annotations

from statecharts.capacity import lot_full
from statecharts.decide import Decide, decide, verdict
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import (
    STATUS_OF_CONFIG,
    Actor,
    DeadlineSource,
    DomainEvent,
    Intent,
    Lot,
    Option,
    Prereservation,
    Rules,
)
from statecharts.ticks import (
    add_duration,
    ceil_tick,
    deadline_from_lifetime,
)

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


def _set_config(lot: Lot, config: str) -> None:
    lot.config = config
    if config != "custom":
        lot.status = STATUS_OF_CONFIG[config]


def _optioned_config(n: int) -> str:
    return ("free", "one_option", "two_options")[n]


def _compact_ranks(
    lot: Lot, when: int, actor: Actor, rules: Rules, decide: Decide = decide
) -> list[DomainEvent]:
    """Keep ranks dense from 1 over options and intents; promotion of rank 2 happens here."""
    events: list[DomainEvent] = []
    # A pending intent for rank 1 keeps it: rank 2 is promoted only when rank 1 is gone.
    if lot.option_at(1) is None and all(i.rank != 1 for i in lot.intents):
        second = lot.option_at(2)
        if second is not None:
            decide(lot.config, "promote", None)
            second.rank = 1
            restarted = rules.rank2_clock == "restart"
            if restarted:
                second.deadline = deadline_from_lifetime(when, rules.option_lifetime, rules.zone)
                second.expiry = ceil_tick(second.deadline)
                second.source = "estimated"
            events.append(DomainEvent("option.promoted", when, option_data(second, actor)))
            if restarted:  # its expiry moved: maybe into the notice window already
                events.extend(expiring_notices(lot, when, rules, at=when))
    # Intents follow the options: the lowest free ranks, in their original order.
    taken = {o.rank for o in lot.options}
    free_ranks = [r for r in (1, 2) if r not in taken]
    for intent, rank in zip(sorted(lot.intents, key=lambda i: i.rank), free_ranks, strict=False):
        intent.rank = rank
    return events


def _end(
    lot: Lot, ended: list[Option], how: str, when: int, actor: Actor, rules: Rules
) -> list[DomainEvent]:
    events = []
    for o in ended:
        lot.options.remove(o)
        events.append(DomainEvent(f"option.{how}", when, option_data(o, actor)))
    events.extend(_compact_ranks(lot, when, actor, rules))
    return events


def supersede_options(
    lot: Lot, victims: list[Option], now: int, actor: Actor, rules: Rules
) -> list[DomainEvent]:
    """End `victims` as ``option.superseded`` (Koban no longer has them), ranks compacted:
    reconciliation's fix when Koban counts fewer options than the lot holds."""
    return _end(lot, victims, "superseded", now, actor, rules)


# --- expiry (sweep and lazy reads) -------------------------------------------------------


def expire_due(
    lot: Lot, now: int, rules: Rules, actor: Actor = "sweep", *, decide: Decide = decide
) -> list[DomainEvent]:
    """Expire every option of one lot whose effective expiry is <= now, tick by tick, in
    order (the tenant-wide sweep over the expiry index is `service.usecases.sweep`).

    Each expiry event carries its own tick as time. Both ranks due at one tick both expire
    (nothing is promoted in between); a rank 2 promoted at one tick may itself be due at a
    later tick that is still <= now (catch-up), and is then expired at that tick.
    """
    events: list[DomainEvent] = []
    while True:
        tick = lot.next_expiry()
        if tick is None or tick > now:
            return events
        due = [o for o in lot.options if o.expiry is not None and o.expiry <= tick]
        # The chart's "rank 1" / "rank 2" are the first and second option held: a rank 2
        # option waiting behind a pending rank 1 intent is the lot's first option.
        held = sorted(lot.options, key=lambda o: o.rank)
        facts = {"rank1_due": held[0] in due, "rank2_due": len(held) > 1 and held[1] in due}
        target = decide(lot.config, "expire", facts)
        for o in sorted(due, key=lambda o: o.rank):
            lot.options.remove(o)
            events.append(DomainEvent("option.expired", tick, option_data(o, actor)))
        _set_config(lot, target)
        events.extend(_compact_ranks(lot, tick, actor, rules, decide))


# --- expiring notices ----------------------------------------------------------------------


def notice_due_at(o: Option, rules: Rules) -> int | None:
    """When the option's `option.expiring` is due: `expiring_notice` before its expiry tick.

    None when no notice is owed: notices are off (``expiring_notice`` 0), or the option has
    no known expiry (an opaque placeholder Koban gave no date for).
    """
    if rules.expiring_notice <= 0 or o.expiry is None:
        return None
    return o.expiry - rules.expiring_notice


def expiring_notices(
    lot: Lot, upto: int, rules: Rules, *, at: int | None = None, actor: Actor = "sweep"
) -> list[DomainEvent]:
    """Give every option of the lot whose notice is due at or before `upto` its notice.

    Once per option: the option is marked `noticed` (a prolongation or a restarted
    promotion later does not bring a second one). A notice changes no configuration, so
    the chart is not asked; the store bumps the lot's version like any transition.

    `at` is the event's time when the notice rides on a transition at that instant (an
    option placed, prolonged or promoted into the window gets its notice then); without
    it, the notice's own due time, or the placement when later (the scheduler's run).
    Options still held but already due (not swept yet) get it too: it then precedes their
    expiry in the stream.
    """
    events: list[DomainEvent] = []
    for o in sorted(lot.options, key=lambda o: o.rank):
        due = notice_due_at(o, rules)
        if o.noticed or due is None or due > upto:
            continue
        o.noticed = True
        when = max(due, o.placed_at) if at is None else at
        events.append(DomainEvent("option.expiring", when, option_data(o, actor)))
    return events


# --- placement: reserve -> (Koban) -> confirm ----------------------------------------------


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
        return _optioned_config(min(2, lot.occupied))
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
    return _compact_ranks(lot, now, "api", rules)


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
    _set_config(lot, target)
    events = [DomainEvent("option.placed", placed_at, option_data(option, actor))]
    events.extend(_compact_ranks(lot, placed_at, actor, rules))
    events.extend(expiring_notices(lot, placed_at, rules, at=placed_at))
    return events


# --- options addressed by rank ------------------------------------------------------------


def _addressed(lot: Lot, rank: int, holder_hint: str | None) -> tuple[Option | None, bool]:
    option = lot.option_at(rank)
    matches = option is not None and (holder_hint is None or option.holder == holder_hint)
    return option, matches


def cancel_option(
    lot: Lot, rank: int, holder_hint: str | None, now: int, rules: Rules, actor: Actor = "api"
) -> list[DomainEvent]:
    option, matches = _addressed(lot, rank, holder_hint)
    target = decide(
        lot.config, "cancel", {"option_found": option is not None, "holder_matches": matches}
    )
    assert option is not None
    _set_config(lot, target)
    return _end(lot, [option], "cancelled", now, actor, rules)


def prolong_option(
    lot: Lot,
    rank: int,
    until: int,
    holder_hint: str | None,
    now: int,
    rules: Rules,
    actor: Actor = "api",
) -> list[DomainEvent]:
    """Prolong once; `until` becomes the deadline and must give a later tick."""
    option, matches = _addressed(lot, rank, holder_hint)
    cap = None
    if option is not None and rules.max_prolongation is not None:
        base = option.original_deadline if option.original_deadline is not None else now
        cap = int(add_duration(base, rules.max_prolongation, rules.zone))
    current = option.expiry if option is not None and option.expiry is not None else now
    facts = {
        "option_found": option is not None,
        "holder_matches": matches,
        "already_prolonged": option is not None and option.prolonged,
        "not_later": ceil_tick(until) <= current,
        "too_long": cap is not None and until > cap,
    }
    target = decide(lot.config, "prolong", facts)
    assert option is not None
    if option.original_deadline is None:
        option.original_deadline = option.deadline
    option.deadline = until
    option.expiry = ceil_tick(until)
    option.prolonged = True
    option.source = "koban"  # Koban's DateProlongation is exactly this date
    _set_config(lot, target)
    events = [DomainEvent("option.prolonged", now, option_data(option, actor))]
    events.extend(expiring_notices(lot, now, rules, at=now))
    return events


# --- préréservation, reservation, désistement --------------------------------------------


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
    _set_config(lot, target)
    if own is not None:
        events.extend(_end(lot, [own], "converted", now, actor, rules))
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
    _set_config(lot, target)
    events = []
    for o in list(lot.options):
        lot.options.remove(o)
        events.append(DomainEvent("option.superseded", now, option_data(o, actor)))
    _compact_ranks(lot, now, actor, rules)  # pending intents move down; no option is left
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
    _set_config(lot, target)
    lot.prereservation = None
    return [
        DomainEvent(
            "lot.withdrawn",
            now,
            {"thirdGuid": pre.holder if pre else holder, "actor": actor},
        )
    ]


def sync_status(
    lot: Lot,
    target: str,
    label: str,
    now: int,
    rules: Rules,
    actor: Actor = "sync",
    rank1_end: int | None = None,
) -> list[DomainEvent]:
    """Koban's status wins: any state to any other, sold included.

    Options that the new state cannot hold end `superseded`; a lot Koban reports in OPTION
    with fewer local options than it says gets opaque placeholders.
    """
    previous = lot.status
    events: list[DomainEvent] = []
    capacity = {"one_option": 1, "two_options": 2, "prereserved": 2}.get(target, 0)
    kept = sorted(lot.options, key=lambda o: o.rank)[:capacity]
    placeholders = 0
    if target in OPTIONED:
        # A pending intent of ours is most likely the option Koban reports: no placeholder
        # for it (the intent's resolution settles it); the configuration follows the
        # options actually held, and the chart is asked about that one.
        placeholders = max(0, capacity - len(kept) - len(lot.intents))
        target = _optioned_config(len(kept) + placeholders)
    new_config = decide(lot.config, "sync_status", {"target": target})
    for o in sorted(lot.options, key=lambda o: o.rank)[capacity:]:
        lot.options.remove(o)
        events.append(DomainEvent("option.superseded", now, option_data(o, actor)))
    for _ in range(placeholders):
        rank = len(lot.options) + 1
        deadline = rank1_end if rank == 1 else None
        lot.options.append(
            Option(
                id=f"opaque-{lot.extcode}-{lot.sequence + len(events) + 1}",
                rank=rank,
                holder=None,
                partner=None,
                placed_at=now,
                deadline=deadline,
                expiry=ceil_tick(deadline) if deadline is not None else None,
                source="koban",
            )
        )
        events.append(
            DomainEvent("option.placed", now, option_data(lot.options[-1], actor, opaque=True))
        )
    if new_config not in ("prereserved", "reserved"):
        lot.prereservation = None
    _set_config(lot, new_config)
    events.extend(_compact_ranks(lot, now, actor, rules))
    if placeholders:  # a placeholder with Koban's EndDate may be inside the window already
        events.extend(expiring_notices(lot, now, rules, at=now))
    if new_config == "custom":
        lot.status = label
    events.append(
        DomainEvent(
            "lot.status_changed",
            now,
            {"from": previous, "to": lot.status, "actor": actor},
        )
    )
    return events


def occupancy_invariant(lot: Lot) -> list[str]:
    """Broken invariants of one lot (empty when sound); used by tests and `lot --check`."""
    problems = []
    if len(lot.options) > 2:
        problems.append("more than two active options")
    ranks = sorted([o.rank for o in lot.options] + [i.rank for i in lot.intents])
    if ranks != list(range(1, len(ranks) + 1)):
        problems.append(f"ranks not dense from 1: {ranks}")
    holders = [o.holder for o in lot.options if o.holder] + [i.holder for i in lot.intents]
    if len(holders) != len(set(holders)):
        problems.append("a prospect holds two options on the lot")
    if lot.config in OPTIONED and _optioned_config(len(lot.options)) != lot.config:
        problems.append(f"config {lot.config} with {len(lot.options)} options")
    if lot.config == "free" and lot.options:
        problems.append("free lot with options")
    return problems
