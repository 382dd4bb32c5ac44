"""The lot-full fact: one function, and every reading of code 05 agrees with it."""

from __future__ import annotations

import pytest

from service.koban import KobanMethod, koban_refusal
from statecharts.capacity import MAX_OPTIONS, lot_full
from statecharts.decide import decide
from statecharts.drift import add_refusal_contradicts, koban_occupancy
from statecharts.errors import KOBAN_CODE, ErrorCode, RuleViolation
from statecharts.model import Lot, Option


def _lot(options: int) -> Lot:
    lot = Lot("L1")
    lot.options = [Option(f"o{r}", r, f"p{r}", None, 0, 1800, 1800) for r in range(1, options + 1)]
    lot.config = ("free", "one_option", "two_options")[options]
    return lot


@pytest.mark.parametrize("occupied", [0, 1, 2, 3])
def test_a_lot_is_full_from_two_options(occupied: int) -> None:
    assert lot_full(occupied) is (occupied >= MAX_OPTIONS)
    assert MAX_OPTIONS == 2


@pytest.mark.parametrize("config", ["free", "one_option"])
def test_the_chart_refuses_a_placement_with_lot_full_exactly_when_the_fact_holds(
    config: str,
) -> None:
    with pytest.raises(RuleViolation) as refused:
        decide(config, "place", {"full": True})
    assert refused.value.code is ErrorCode.LOT_FULL
    assert decide(config, "place", {"full": False}) in ("one_option", "two_options")


def test_lot_full_is_koban_code_05_both_ways() -> None:
    assert KOBAN_CODE[ErrorCode.LOT_FULL] == "05"
    assert koban_refusal(KobanMethod.ADD.value, "05") is ErrorCode.LOT_FULL


@pytest.mark.parametrize("options", [0, 1, 2])
def test_an_add_refused_05_contradicts_a_lot_that_is_not_full(options: int) -> None:
    assert add_refusal_contradicts("05", _lot(options)) is not lot_full(options)


@pytest.mark.parametrize(
    ("result", "max_rank", "occupied"),
    [(0, 0, 0), (1, 1, 1), (1, 2, 2), (-3, 0, 2), (-1, 0, None), (-2, 1, None)],
)
def test_koban_occupancy_reads_get_lot_status(
    result: int, max_rank: int, occupied: int | None
) -> None:
    assert koban_occupancy(result, max_rank) == occupied
