"""Behaviour of the lot chart, through the chart itself and its compiled form."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from statemachine.orderedset import OrderedSet

from statecharts.decide import decide
from statecharts.errors import HTTP_STATUS, KOBAN_CODE, ErrorCode, RuleViolation
from statecharts.lot_chart import (
    CONFIGS,
    EVENTS,
    FACT_DOMAINS,
    FACTS,
    STATE_PATH,
    LotChart,
    leaf_config,
    restore_chart,
    run_chart,
)

Decider = Callable[..., str]
OK = {"option_found": True, "holder_matches": True}


@pytest.fixture(params=[run_chart, decide], ids=["chart", "compiled"])
def step(request: pytest.FixtureRequest) -> Decider:
    fn: Decider = request.param
    return fn


def refusal(step: Decider, config: str, event: str, **facts: bool | str) -> ErrorCode:
    with pytest.raises(RuleViolation) as refused:
        step(config, event, facts)
    return refused.value.code


# -- placement ------------------------------------------------------------------------


def test_rank_2_only_after_rank_1(step: Decider) -> None:
    assert step("free", "place", {}) == "one_option"
    assert step("one_option", "place", {}) == "two_options"
    assert refusal(step, "two_options", "place") is ErrorCode.LOT_FULL


@pytest.mark.parametrize(
    ("fact", "code"),
    [
        ("full", ErrorCode.LOT_FULL),
        ("prospect_holds", ErrorCode.PROSPECT_ALREADY_HOLDS),
        ("prospect_at_limit", ErrorCode.PROSPECT_OPTION_LIMIT),
        ("user_at_limit", ErrorCode.USER_OPTION_LIMIT),
        ("rank_mismatch", ErrorCode.RANK_NOT_AVAILABLE),
    ],
)
@pytest.mark.parametrize("config", ["free", "one_option"])
def test_each_placement_refusal(step: Decider, config: str, fact: str, code: ErrorCode) -> None:
    assert refusal(step, config, "place", **{fact: True}) is code


def test_placement_refusals_are_checked_in_spec_order(step: Decider) -> None:
    order = FACTS["place"]
    assert order == (
        "full",
        "prospect_holds",
        "prospect_at_limit",
        "user_at_limit",
        "rank_mismatch",
    )
    assert refusal(step, "free", "place", full=True, prospect_at_limit=True) is ErrorCode.LOT_FULL
    for i, fact in enumerate(order):
        later = dict.fromkeys(order[i:], True)
        code = refusal(step, "one_option", "place", **later)
        assert code is refusal(step, "one_option", "place", **{fact: True})


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ("prereserved", ErrorCode.LOT_PRERESERVED),
        ("reserved", ErrorCode.LOT_NOT_AVAILABLE),
        ("blocked", ErrorCode.LOT_NOT_AVAILABLE),
        ("sold", ErrorCode.LOT_NOT_AVAILABLE),
        ("custom", ErrorCode.LOT_NOT_AVAILABLE),
    ],
)
def test_unavailable_lots_refuse_placement_before_any_other_check(
    step: Decider, config: str, code: ErrorCode
) -> None:
    everything = dict.fromkeys(FACTS["place"], True)
    assert refusal(step, config, "place") is code
    assert refusal(step, config, "place", **everything) is code


# -- cancel, prolong --------------------------------------------------------------------


def test_cancel(step: Decider) -> None:
    assert step("one_option", "cancel", OK) == "free"
    assert step("two_options", "cancel", OK) == "one_option"
    assert step("prereserved", "cancel", OK) == "prereserved"
    assert refusal(step, "one_option", "cancel") is ErrorCode.OPTION_NOT_FOUND
    assert refusal(step, "two_options", "cancel", option_found=True) is ErrorCode.OPTION_MOVED
    for config in ("free", "reserved", "blocked", "sold", "custom"):
        assert refusal(step, config, "cancel", **OK) is ErrorCode.OPTION_NOT_FOUND


def test_prolong_refusals_in_order(step: Decider) -> None:
    for config in ("one_option", "two_options", "prereserved"):
        assert step(config, "prolong", OK) == config
        assert (
            refusal(step, config, "prolong", already_prolonged=True) is ErrorCode.OPTION_NOT_FOUND
        )
        assert (
            refusal(step, config, "prolong", option_found=True, not_later=True)
            is ErrorCode.OPTION_MOVED
        )
        assert (
            refusal(step, config, "prolong", **OK, already_prolonged=True, too_long=True)
            is ErrorCode.ALREADY_PROLONGED
        )
        assert (
            refusal(step, config, "prolong", **OK, not_later=True, too_long=True)
            is ErrorCode.PROLONGATION_NOT_LATER
        )
        assert refusal(step, config, "prolong", **OK, too_long=True) is (
            ErrorCode.PROLONGATION_TOO_LONG
        )
    for config in ("free", "reserved", "blocked", "sold", "custom"):
        assert refusal(step, config, "prolong", **OK) is ErrorCode.OPTION_NOT_FOUND


# -- expiry, promotion ------------------------------------------------------------------


def test_expire(step: Decider) -> None:
    assert step("one_option", "expire", {"rank1_due": True}) == "free"
    assert step("one_option", "expire", {"rank1_due": True, "rank2_due": True}) == "free"
    assert refusal(step, "one_option", "expire", rank2_due=True) is ErrorCode.NOTHING_DUE
    assert step("two_options", "expire", {"rank1_due": True, "rank2_due": True}) == "free"
    assert step("two_options", "expire", {"rank1_due": True}) == "one_option"
    assert step("two_options", "expire", {"rank2_due": True}) == "one_option"
    assert refusal(step, "two_options", "expire") is ErrorCode.NOTHING_DUE
    assert step("prereserved", "expire", {"rank2_due": True}) == "prereserved"
    assert refusal(step, "prereserved", "expire") is ErrorCode.NOTHING_DUE
    for config in ("free", "reserved", "blocked", "sold", "custom"):
        assert refusal(step, config, "expire", rank1_due=True) is ErrorCode.NOTHING_DUE


def test_promote(step: Decider) -> None:
    assert step("one_option", "promote") == "one_option"
    assert step("prereserved", "promote") == "prereserved"
    for config in ("free", "two_options", "reserved", "blocked", "sold", "custom"):
        assert refusal(step, config, "promote") is ErrorCode.NOTHING_DUE


# -- préréservation, reservation, désistement -------------------------------------------


def test_prereserve(step: Decider) -> None:
    for config in ("free", "one_option", "two_options"):
        assert step(config, "prereserve") == "prereserved"
    for config in ("prereserved", "reserved", "blocked", "sold", "custom"):
        assert refusal(step, config, "prereserve") is ErrorCode.LOT_NOT_AVAILABLE


def test_reservation_validated_from_anything_but_sold(step: Decider) -> None:
    for config in CONFIGS:
        if config == "sold":
            assert refusal(step, config, "validate_reservation") is ErrorCode.LOT_NOT_AVAILABLE
        else:
            assert step(config, "validate_reservation") == "reserved"


@pytest.mark.parametrize("config", ["prereserved", "reserved"])
def test_withdraw_targets(step: Decider, config: str) -> None:
    holder = {"holder_matches": True}
    assert step(config, "withdraw", holder) == "free"
    assert step(config, "withdraw", {**holder, "has_options": True}) == "one_option"
    two = {**holder, "has_options": True, "has_two_options": True}
    assert step(config, "withdraw", two) == "two_options"
    assert (
        refusal(step, config, "withdraw", has_options=True)
        is ErrorCode.PRERESERVATION_HOLDER_MISMATCH
    )


def test_withdraw_needs_a_prereservation(step: Decider) -> None:
    for config in ("free", "one_option", "two_options", "blocked", "sold", "custom"):
        assert refusal(step, config, "withdraw", holder_matches=True) is ErrorCode.NOT_PRERESERVED


# -- status sync ------------------------------------------------------------------------


def test_sync_moves_any_state_anywhere_even_out_of_sold(step: Decider) -> None:
    for source in CONFIGS:
        for target in CONFIGS:
            assert step(source, "sync_status", {"target": target}) == target


def test_sold_is_final_for_every_business_event(step: Decider) -> None:
    for event in EVENTS:
        if event == "sync_status":
            continue
        for values in _all_fact_values(event):
            with pytest.raises(RuleViolation):
                step("sold", event, values)


def _all_fact_values(event: str) -> Iterator[dict[str, bool | str]]:
    from itertools import product

    names = FACTS[event]
    for combo in product(*(FACT_DOMAINS[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


# -- the chart as a library object ------------------------------------------------------


def test_strict_flags_are_set() -> None:
    assert LotChart.allow_event_without_transition is False
    assert LotChart.catch_errors_as_events is False
    assert not any(state.final for state in LotChart.states_map.values())


def test_every_leaf_has_an_explicit_transition_for_every_event() -> None:
    """So the library never answers TransitionNotAllowed: every refusal has its code."""
    for config in CONFIGS:
        leaf = LotChart.states_map[config]
        chain = [leaf, *leaf.ancestors()]
        for event in EVENTS:
            assert any(event in [str(e) for e in t.events] for s in chain for t in s.transitions), (
                config,
                event,
            )


def test_restoring_a_compound_configuration_activates_the_whole_path() -> None:
    for config in CONFIGS:
        chart = restore_chart(config)
        assert tuple(s.id for s in chart.configuration) == STATE_PATH[config]
        assert leaf_config(chart) == config
    chart = restore_chart("two_options")
    chart.send("cancel", facts=OK)
    assert tuple(chart.configuration_values) == ("optioned", "one_option")
    chart.send("cancel", facts=OK)
    assert chart.configuration_values == {"free"}


def test_restoring_runs_no_entry_callback() -> None:
    entered: list[str] = []

    class Record:
        state: Any = OrderedSet(STATE_PATH["two_options"])

    class Spy:
        def on_enter_state(self, state: Any) -> None:
            entered.append(state.id)

    chart = LotChart(model=Record(), listeners=[Spy()])
    assert entered == []
    assert leaf_config(chart) == "two_options"
    chart.send("expire", facts={"rank1_due": True})
    assert entered == ["one_option"]


def test_a_refusal_leaves_the_state_unchanged() -> None:
    chart = restore_chart("one_option")
    with pytest.raises(RuleViolation) as refused:
        chart.send("place", facts={"full": True})
    assert refused.value.code is ErrorCode.LOT_FULL
    assert leaf_config(chart) == "one_option"
    assert chart.send("place", facts={}) is None
    assert leaf_config(chart) == "two_options"


class _Exploding(Mapping[str, bool | str]):
    def __getitem__(self, key: str) -> bool | str:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_an_exception_inside_a_validator_propagates_and_changes_nothing() -> None:
    chart = restore_chart("two_options")
    with pytest.raises(RuntimeError, match="boom"):
        chart.send("cancel", facts=_Exploding())
    assert tuple(chart.configuration_values) == ("optioned", "two_options")
    assert chart.send("cancel", facts=OK) is None
    assert leaf_config(chart) == "one_option"


def test_unknown_event_raises_instead_of_being_ignored() -> None:
    chart = restore_chart("free")
    with pytest.raises(LotChart.TransitionNotAllowed):
        chart.send("explode")


# -- errors -----------------------------------------------------------------------------


def test_error_codes_carry_status_and_koban_code() -> None:
    assert {code.value for code in ErrorCode} == {code.name for code in ErrorCode}
    assert set(HTTP_STATUS) == set(KOBAN_CODE) == set(ErrorCode)
    violation = RuleViolation(ErrorCode.LOT_FULL)
    assert (violation.http_status, violation.koban_code) == (409, "05")
    assert violation.message and str(violation) == violation.message
    assert RuleViolation(ErrorCode.OPTION_NOT_FOUND, "gone").message == "gone"
    assert RuleViolation(ErrorCode.OPTION_NOT_FOUND).http_status == 404
    assert RuleViolation(ErrorCode.PROLONGATION_TOO_LONG).http_status == 422
    assert RuleViolation(ErrorCode.NOTHING_DUE).koban_code is None
    assert KOBAN_CODE[ErrorCode.ALREADY_PROLONGED] == "02"
