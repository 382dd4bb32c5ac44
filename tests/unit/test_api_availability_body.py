"""The availability route builds its JSON directly (its hot path skips pydantic): the body is
exactly what ``dump(AvailabilityOut(...))`` gives for the same answer, field for field and
in the same order, for every kind of lot, and the probe leaves the lot untouched."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from service.entrypoints.api.models import AvailabilityOut, dump
from service.entrypoints.api.routes_lots import availability
from statecharts import transitions as tr
from statecharts.errors import RuleViolation
from statecharts.model import Lot
from statecharts.ticks import parse_instant
from tests.support.rules import make_rules

T0 = 1_800_000_600
RULES = make_rules()


def _placed(code: str, holders: int) -> Lot:
    lot = Lot(code, program="P")
    for h in range(holders):
        tr.place_option(
            lot, option_id=f"o{h}", holder=f"p{h}", partner=None, placed_at=T0, rules=RULES
        )
    return lot


def _lots() -> list[Lot | None]:
    free = Lot("F", program="P")
    one, two = _placed("O1", 1), _placed("O2", 2)
    pending = _placed("PI", 1)
    tr.reserve_placement(pending, "i1", "p7", None, None, T0, RULES, 0, 0)
    pre = _placed("PR", 1)
    tr.prereserve(pre, "p0", None, 100_000, 1_000, T0, RULES)
    blocked = Lot("B", program="P")
    tr.sync_status(blocked, "blocked", "BLOQUE", T0, RULES)
    return [free, one, two, pending, pre, blocked, None]


def _as_model(body: dict[str, Any]) -> AvailabilityOut:
    end = body["endDate"]
    return AvailabilityOut(
        extcode=body["extcode"],
        result=body["result"],
        max_rank=body["maxRank"],
        end_date=int(parse_instant(end)) if isinstance(end, str) else None,
        can_place=body["canPlace"],
        next_rank=body["nextRank"],
        reason=body["reason"],
        status=body["status"],
    )


@pytest.mark.parametrize("third", [None, "p0", "p9"])
@pytest.mark.parametrize("counts", [(0, 0), (3, 0), (0, 50)])
def test_body_is_the_models_dump(third: str | None, counts: tuple[int, int]) -> None:
    rules = replace(RULES, max_options_per_user=50)
    for lot in _lots():
        before = copy.deepcopy(lot)
        code = lot.extcode if lot is not None else "NOPE"
        body = availability(lot, code, rules, T0 + 60, third, *counts)
        assert list(body) == list(dump(_as_model(body)))
        assert body == dump(_as_model(body)), code
        assert lot == before, code  # the placement probe did not touch the lot


def test_bodies_differ_where_the_lots_do() -> None:
    bodies = {
        (lot.extcode if lot else "NOPE"): availability(
            lot, lot.extcode if lot else "NOPE", RULES, T0 + 60, None, 0, 0
        )
        for lot in _lots()
    }
    summary = {
        k: (b["result"], b["maxRank"], b["canPlace"], b["reason"]) for k, b in bodies.items()
    }
    assert summary == {
        "F": (0, 0, True, None),
        "O1": (1, 1, True, None),
        "O2": (-3, 2, False, "LOT_FULL"),
        "PI": (1, 1, False, "LOT_FULL"),
        "PR": (-2, 0, False, "LOT_PRERESERVED"),
        "B": (-4, 0, False, "LOT_NOT_AVAILABLE"),
        "NOPE": (-1, 0, False, "LOT_UNKNOWN"),
    }
    assert bodies["O1"]["endDate"] is not None and bodies["O1"]["endDate"].endswith("Z")


@pytest.mark.parametrize("holder", ["p0", "p9"])
@pytest.mark.parametrize("counts", [(0, 0), (3, 0), (0, 50)])
@pytest.mark.parametrize("rank", [None, 1, 2])
def test_the_probe_answers_what_reserving_would(
    holder: str, counts: tuple[int, int], rank: int | None
) -> None:
    """`placement_refusal` (no reservation, no exception) refuses exactly when
    `reserve_placement` raises, with its code, and otherwise names the rank it holds."""
    rules = replace(RULES, max_options_per_user=50)
    for lot in _lots():
        if lot is None:
            continue
        refusal = tr.placement_refusal(lot, holder, rank, rules, *counts)
        trial = copy.deepcopy(lot)
        try:
            intent = tr.reserve_placement(trial, "x", holder, None, rank, T0, rules, *counts)
        except RuleViolation as exc:
            assert refusal is exc.code, lot.extcode
        else:
            assert refusal is None, lot.extcode
            assert intent.rank == len(lot.options) + len(lot.intents) + 1
