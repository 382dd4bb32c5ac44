# The library is typed (py.typed) but its transition builders (``.to.itself``,
# ``.from_.any``) are not annotated: calling them is fine.
# mypy: disable-error-code="no-untyped-call"
"""The per-lot statechart: the single source of truth for the lot rules (docs/semantics.md).

The chart holds no lot data. Every event carries ``facts``: the outcomes of the guards,
computed by the caller from the lot, the prospect and the tenant settings (``FACTS`` names
them per event). Guards (``is_*`` / ``has_*``) read them to pick a target; validators
(``ensure_*`` / ``refuse_*``) raise :class:`RuleViolation` and leave the state unchanged.
Every (state, event) pair has an explicit transition, so a refusal is always a
``RuleViolation`` with the right code, never the library's ``TransitionNotAllowed``.

``run_chart`` is the slow reference path (one chart per call). Hot paths use
``statecharts.decide.decide``, a lookup in the table compiled from this chart
(``make compile-charts``), proved equal to it by ``tests/unit/test_compiled_table.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from statemachine import State, StateChart
from statemachine.orderedset import OrderedSet

from .errors import ErrorCode, RuleViolation

Facts = Mapping[str, bool | str]

# Leaf configurations: the public "config" names stored per lot.
CONFIGS: tuple[str, ...] = (
    "free",
    "one_option",
    "two_options",
    "prereserved",
    "reserved",
    "blocked",
    "sold",
    "custom",
)

# Full active path (outermost first) of each leaf configuration.
STATE_PATH: dict[str, tuple[str, ...]] = {
    config: ("optioned", config) if config in ("one_option", "two_options") else (config,)
    for config in CONFIGS
}

# Facts each event reads, in the order the compiled table keys them.
FACTS: dict[str, tuple[str, ...]] = {
    "place": ("full", "prospect_holds", "prospect_at_limit", "user_at_limit", "rank_mismatch"),
    "cancel": ("option_found", "holder_matches"),
    "prolong": ("option_found", "holder_matches", "already_prolonged", "not_later", "too_long"),
    "expire": ("rank1_due", "rank2_due"),
    "promote": (),
    "prereserve": (),
    "validate_reservation": (),
    "withdraw": ("holder_matches", "has_options", "has_two_options"),
    "sync_status": ("target",),
}

EVENTS: tuple[str, ...] = tuple(FACTS)

_BOOLS: tuple[bool, ...] = (False, True)
FACT_DOMAINS: dict[str, tuple[bool | str, ...]] = {
    name: (CONFIGS if name == "target" else _BOOLS) for names in FACTS.values() for name in names
}

# Ordered refusals: the first fact with the given truth value refuses with its code.
# `full` is `capacity.lot_full` of the lot's occupancy (Koban's 05), computed by the caller.
_PLACE_REFUSALS: tuple[tuple[str, bool, ErrorCode], ...] = (
    ("full", True, ErrorCode.LOT_FULL),
    ("prospect_holds", True, ErrorCode.PROSPECT_ALREADY_HOLDS),
    ("prospect_at_limit", True, ErrorCode.PROSPECT_OPTION_LIMIT),
    ("user_at_limit", True, ErrorCode.USER_OPTION_LIMIT),
    ("rank_mismatch", True, ErrorCode.RANK_NOT_AVAILABLE),
)
_CANCEL_REFUSALS: tuple[tuple[str, bool, ErrorCode], ...] = (
    ("option_found", False, ErrorCode.OPTION_NOT_FOUND),
    ("holder_matches", False, ErrorCode.OPTION_MOVED),
)
_PROLONG_REFUSALS: tuple[tuple[str, bool, ErrorCode], ...] = (
    *_CANCEL_REFUSALS,
    ("already_prolonged", True, ErrorCode.ALREADY_PROLONGED),
    ("not_later", True, ErrorCode.PROLONGATION_NOT_LATER),
    ("too_long", True, ErrorCode.PROLONGATION_TOO_LONG),
)


def _fact(facts: Facts, name: str) -> bool:
    """A boolean fact; a missing one is False."""
    return bool(facts.get(name, False))


def _check(facts: Facts, refusals: tuple[tuple[str, bool, ErrorCode], ...]) -> None:
    for name, refused_when, code in refusals:
        if _fact(facts, name) is refused_when:
            raise RuleViolation(code)


class LotChart(StateChart[Any]):
    """Lifecycle of one lot: free, optioned (one or two options), pre-reserved, reserved,
    blocked, sold, or a custom Koban status mirrored read-only."""

    # Strict mode, as the library's defaults are lenient: an event without a transition
    # raises, and callback errors propagate instead of becoming ``error.execution`` events
    # while the state changes.
    allow_event_without_transition = False
    catch_errors_as_events = False

    free = State(initial=True)

    class optioned(State.Compound):
        one_option = State(initial=True)
        two_options = State()

    prereserved = State()
    reserved = State()
    blocked = State()
    # Sold is final for every business event, but is NOT declared ``final=True``: the
    # library forbids any transition out of a final state ("Cannot declare transitions from
    # final state"), skips final states in ``from_.any()``, and stops the engine once a
    # top-level final state is entered. Koban is the authority and a status sync may
    # un-sell a lot, so ``sync_status`` must leave it; every other event is refused.
    sold = State()
    custom = State()  # a custom Koban status, mirrored read-only

    place = (
        free.to(optioned, validators="ensure_placement_allowed")
        | optioned.one_option.to(optioned.two_options, validators="ensure_placement_allowed")
        | optioned.two_options.to.itself(internal=True, validators="refuse_lot_full")
        | prereserved.to.itself(internal=True, validators="refuse_lot_prereserved")
        | reserved.to.itself(internal=True, validators="refuse_lot_not_available")
        | blocked.to.itself(internal=True, validators="refuse_lot_not_available")
        | sold.to.itself(internal=True, validators="refuse_lot_not_available")
        | custom.to.itself(internal=True, validators="refuse_lot_not_available")
    )

    cancel = (
        optioned.one_option.to(free, validators="ensure_option_held")
        | optioned.two_options.to(optioned.one_option, validators="ensure_option_held")
        | prereserved.to.itself(internal=True, validators="ensure_option_held")
        | free.to.itself(internal=True, validators="refuse_option_not_found")
        | reserved.to.itself(internal=True, validators="refuse_option_not_found")
        | blocked.to.itself(internal=True, validators="refuse_option_not_found")
        | sold.to.itself(internal=True, validators="refuse_option_not_found")
        | custom.to.itself(internal=True, validators="refuse_option_not_found")
    )

    prolong = (
        optioned.one_option.to.itself(internal=True, validators="ensure_prolongation_allowed")
        | optioned.two_options.to.itself(internal=True, validators="ensure_prolongation_allowed")
        | prereserved.to.itself(internal=True, validators="ensure_prolongation_allowed")
        | free.to.itself(internal=True, validators="refuse_option_not_found")
        | reserved.to.itself(internal=True, validators="refuse_option_not_found")
        | blocked.to.itself(internal=True, validators="refuse_option_not_found")
        | sold.to.itself(internal=True, validators="refuse_option_not_found")
        | custom.to.itself(internal=True, validators="refuse_option_not_found")
    )

    expire = (
        # One option: only rank 1 matters (a rank-2 fact is meaningless there).
        optioned.one_option.to(free, validators="ensure_rank1_due")
        # Two options: both due at one tick both expire, nothing promoted in between.
        | optioned.two_options.to(free, cond="is_all_due", validators="ensure_anything_due")
        | optioned.two_options.to(optioned.one_option, validators="ensure_anything_due")
        # Pre-reserved lots keep their ordinary options; the state does not move.
        | prereserved.to.itself(internal=True, validators="ensure_anything_due")
        | free.to.itself(internal=True, validators="refuse_nothing_due")
        | reserved.to.itself(internal=True, validators="refuse_nothing_due")
        | blocked.to.itself(internal=True, validators="refuse_nothing_due")
        | sold.to.itself(internal=True, validators="refuse_nothing_due")
        | custom.to.itself(internal=True, validators="refuse_nothing_due")
    )

    # Rank 2 became rank 1 (rank 1 ended while rank 2 remains): the state does not move.
    promote = (
        optioned.one_option.to.itself(internal=True)
        | prereserved.to.itself(internal=True)
        | free.to.itself(internal=True, validators="refuse_nothing_due")
        | optioned.two_options.to.itself(internal=True, validators="refuse_nothing_due")
        | reserved.to.itself(internal=True, validators="refuse_nothing_due")
        | blocked.to.itself(internal=True, validators="refuse_nothing_due")
        | sold.to.itself(internal=True, validators="refuse_nothing_due")
        | custom.to.itself(internal=True, validators="refuse_nothing_due")
    )

    prereserve = (
        free.to(prereserved)
        | optioned.to(prereserved)
        | prereserved.to.itself(internal=True, validators="refuse_lot_not_available")
        | reserved.to.itself(internal=True, validators="refuse_lot_not_available")
        | blocked.to.itself(internal=True, validators="refuse_lot_not_available")
        | sold.to.itself(internal=True, validators="refuse_lot_not_available")
        | custom.to.itself(internal=True, validators="refuse_lot_not_available")
    )

    # Koban validated a reservation file: RESV whatever the local state, except sold.
    validate_reservation = (
        free.to(reserved)
        | optioned.to(reserved)
        | prereserved.to(reserved)
        | reserved.to.itself(internal=True)
        | blocked.to(reserved)
        | custom.to(reserved)
        | sold.to.itself(internal=True, validators="refuse_lot_not_available")
    )

    withdraw = (
        prereserved.to(optioned.two_options, cond="has_two_options", validators="ensure_holder")
        | prereserved.to(optioned.one_option, cond="has_options", validators="ensure_holder")
        | prereserved.to(free, validators="ensure_holder")
        | reserved.to(optioned.two_options, cond="has_two_options", validators="ensure_holder")
        | reserved.to(optioned.one_option, cond="has_options", validators="ensure_holder")
        | reserved.to(free, validators="ensure_holder")
        | free.to.itself(internal=True, validators="refuse_not_prereserved")
        | optioned.to.itself(internal=True, validators="refuse_not_prereserved")  # type: ignore[attr-defined]
        | blocked.to.itself(internal=True, validators="refuse_not_prereserved")
        | sold.to.itself(internal=True, validators="refuse_not_prereserved")
        | custom.to.itself(internal=True, validators="refuse_not_prereserved")
    )

    # Koban is the authority on status: a sync moves any state (sold included) anywhere.
    sync_status = (
        free.from_.any(cond="is_target_free")
        | optioned.one_option.from_.any(cond="is_target_one_option")
        | optioned.two_options.from_.any(cond="is_target_two_options")
        | prereserved.from_.any(cond="is_target_prereserved")
        | reserved.from_.any(cond="is_target_reserved")
        | blocked.from_.any(cond="is_target_blocked")
        | sold.from_.any(cond="is_target_sold")
        | custom.from_.any(cond="is_target_custom")
    )

    # -- validators: raise RuleViolation, never change state ---------------------------

    def ensure_placement_allowed(self, facts: Facts) -> None:
        _check(facts, _PLACE_REFUSALS)

    def ensure_option_held(self, facts: Facts) -> None:
        _check(facts, _CANCEL_REFUSALS)

    def ensure_prolongation_allowed(self, facts: Facts) -> None:
        _check(facts, _PROLONG_REFUSALS)

    def ensure_rank1_due(self, facts: Facts) -> None:
        if not _fact(facts, "rank1_due"):
            raise RuleViolation(ErrorCode.NOTHING_DUE)

    def ensure_anything_due(self, facts: Facts) -> None:
        if not (_fact(facts, "rank1_due") or _fact(facts, "rank2_due")):
            raise RuleViolation(ErrorCode.NOTHING_DUE)

    def ensure_holder(self, facts: Facts) -> None:
        if not _fact(facts, "holder_matches"):
            raise RuleViolation(ErrorCode.PRERESERVATION_HOLDER_MISMATCH)

    def refuse_lot_full(self) -> None:
        raise RuleViolation(ErrorCode.LOT_FULL)

    def refuse_lot_prereserved(self) -> None:
        raise RuleViolation(ErrorCode.LOT_PRERESERVED)

    def refuse_lot_not_available(self) -> None:
        raise RuleViolation(ErrorCode.LOT_NOT_AVAILABLE)

    def refuse_option_not_found(self) -> None:
        raise RuleViolation(ErrorCode.OPTION_NOT_FOUND)

    def refuse_nothing_due(self) -> None:
        raise RuleViolation(ErrorCode.NOTHING_DUE)

    def refuse_not_prereserved(self) -> None:
        raise RuleViolation(ErrorCode.NOT_PRERESERVED)

    # -- guards: pick the target ---------------------------------------------------------

    def is_all_due(self, facts: Facts) -> bool:
        return _fact(facts, "rank1_due") and _fact(facts, "rank2_due")

    def has_two_options(self, facts: Facts) -> bool:
        return _fact(facts, "has_two_options")

    def has_options(self, facts: Facts) -> bool:
        return _fact(facts, "has_options")

    def is_target_free(self, facts: Facts) -> bool:
        return facts.get("target") == "free"

    def is_target_one_option(self, facts: Facts) -> bool:
        return facts.get("target") == "one_option"

    def is_target_two_options(self, facts: Facts) -> bool:
        return facts.get("target") == "two_options"

    def is_target_prereserved(self, facts: Facts) -> bool:
        return facts.get("target") == "prereserved"

    def is_target_reserved(self, facts: Facts) -> bool:
        return facts.get("target") == "reserved"

    def is_target_blocked(self, facts: Facts) -> bool:
        return facts.get("target") == "blocked"

    def is_target_sold(self, facts: Facts) -> bool:
        return facts.get("target") == "sold"

    def is_target_custom(self, facts: Facts) -> bool:
        return facts.get("target") == "custom"


# Safety net: should the library ever find no transition (it cannot while every
# (state, event) pair has one, which tests/unit/test_lot_chart.py checks), refuse with the
# event's generic code rather than leak ``TransitionNotAllowed``.
_FALLBACK_REFUSAL: dict[str, ErrorCode] = {
    "place": ErrorCode.LOT_NOT_AVAILABLE,
    "cancel": ErrorCode.OPTION_NOT_FOUND,
    "prolong": ErrorCode.OPTION_NOT_FOUND,
    "expire": ErrorCode.NOTHING_DUE,
    "promote": ErrorCode.NOTHING_DUE,
    "prereserve": ErrorCode.LOT_NOT_AVAILABLE,
    "validate_reservation": ErrorCode.LOT_NOT_AVAILABLE,
    "withdraw": ErrorCode.NOT_PRERESERVED,
}


class _Record:
    """The minimal model a chart is restored from: one ``state`` field."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


def restore_chart(config: str) -> LotChart:
    """A chart already in leaf ``config``, without running any entry callback.

    The library keeps a compound configuration as a *set* of state values on the model:
    the leaf alone would leave ``optioned`` inactive (its exit would then be skipped), so
    the whole path is restored, as an ``OrderedSet``.
    """
    path = STATE_PATH.get(config)
    if path is None:
        raise ValueError(f"unknown lot configuration {config!r}")
    value: Any = OrderedSet(path) if len(path) > 1 else path[0]
    return LotChart(model=_Record(value))


def leaf_config(chart: LotChart) -> str:
    """The leaf configuration name of a chart (``one_option``, not ``optioned``)."""
    leaves = [state.id for state in chart.configuration if state.is_atomic]
    if len(leaves) != 1:  # pragma: no cover - the chart has no parallel state
        raise RuntimeError(f"expected one active leaf state, got {leaves!r}")
    return str(leaves[0])


def run_chart(config: str, event: str, facts: Facts | None = None) -> str:
    """Restore a chart in ``config``, send ``event`` with ``facts``; return the new config.

    Raises :class:`RuleViolation` when a rule refuses the event (the state is unchanged),
    ``ValueError`` for an unknown configuration, event or sync target.
    """
    if event not in FACTS:
        raise ValueError(f"unknown lot event {event!r}")
    facts = {} if facts is None else facts
    if event == "sync_status" and facts.get("target") not in STATE_PATH:
        raise ValueError(f"sync_status needs a target in {CONFIGS}, got {facts.get('target')!r}")
    chart = restore_chart(config)
    try:
        chart.send(event, facts=facts)
    except LotChart.TransitionNotAllowed as err:  # pragma: no cover - see _FALLBACK_REFUSAL
        raise RuleViolation(_FALLBACK_REFUSAL[event]) from err
    return leaf_config(chart)
