"""Drift judgements: Koban's view against the lot's, without Redis or Koban."""

from __future__ import annotations

import pytest

from statecharts.drift import add_refusal_contradicts, in_drift_tolerance, rank_verdict
from statecharts.model import Lot, Option

TICK = 1_795_000_000 - 1_795_000_000 % 1800


@pytest.mark.parametrize(
    ("result", "max_rank", "rank", "held", "verdict"),
    [
        (0, 0, 1, 0, None),  # free on both sides: go on with rank 1
        (1, 1, 2, 1, None),  # one option on both sides: rank 2 is next
        (1, 2, 2, 1, "full"),
        (-3, 0, 1, 0, "full"),
        (-1, 0, 1, 0, "unknown"),
        (-2, 1, 1, 0, "prereserved"),
        (7, 0, 1, 0, "unknown"),  # an undocumented result
        (1, 1, 1, 0, "ahead"),  # Koban holds one we do not know
        (0, 0, 2, 0, "wait"),  # our rank-1 placement is still on its way to Koban
        (0, 0, 2, 1, "behind"),  # Koban lost an option we hold
    ],
)
def test_get_lot_status_before_an_add(
    result: int, max_rank: int, rank: int, held: int, verdict: str | None
) -> None:
    assert rank_verdict(result, max_rank, rank, held) == verdict


def test_koban_may_lag_only_within_the_tolerance_after_a_tick() -> None:
    assert in_drift_tolerance(TICK + 59, 60)
    assert not in_drift_tolerance(TICK + 60, 60)
    assert not in_drift_tolerance(TICK + 600, 0)


def _lot(config: str, options: int = 0) -> Lot:
    lot = Lot("L1", config=config)
    lot.options = [Option(f"o{r}", r, f"p{r}", None, 0, 1800, 1800) for r in range(1, options + 1)]
    return lot


@pytest.mark.parametrize(
    ("code", "lot", "contradicts"),
    [
        ("01", _lot("free"), False),  # counts on other lots
        ("03", _lot("free"), False),
        ("02", _lot("free"), True),  # not available, while we see it free
        ("02", _lot("reserved"), False),
        ("04", _lot("one_option", 1), True),
        ("04", _lot("prereserved"), False),
        ("05", _lot("two_options", 2), False),
        (None, _lot("free"), True),  # no code: reconcile
        ("99", _lot("free"), True),
    ],
)
def test_an_add_refusal_against_the_lot(code: str | None, lot: Lot, contradicts: bool) -> None:
    assert add_refusal_contradicts(code, lot) is contradicts
