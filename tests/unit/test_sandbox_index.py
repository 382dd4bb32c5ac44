"""The sandbox's derived counts (per prospect, per API user) and its "nothing due before"
mark agree with a full scan of the lots after every operation, in random sequences of
placements, prolongations, cancellations, préréservations, reservations, status changes
and clock moves (including options placed already due)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from service.sandbox import SandboxState
from service.sandbox.state import SandboxRefusal
from statecharts.ticks import latest_tick

T0 = 1_800_000_600  # ten minutes after a tick
LOTS = [f"L{i}" for i in range(6)]
PROSPECTS = [f"p{i}" for i in range(5)]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def scanned(state: SandboxState) -> tuple[dict[str, int], int]:
    per = {
        p: sum(1 for lot in state.lots.values() for o in lot.options if o.holder == p)
        for p in PROSPECTS
    }
    api = sum(1 for lot in state.lots.values() for o in lot.options if o.via_api)
    return per, api


def check(state: SandboxState) -> None:
    per, api = scanned(state)
    assert {p: state.prospect_option_count(p) for p in PROSPECTS} == per
    assert state.user_option_count() == api


def step(state: SandboxState, clock: Clock, rng: random.Random) -> None:
    lot = rng.choice(LOTS)
    who = rng.choice(PROSPECTS)
    kind = rng.randrange(10)
    try:
        if kind <= 2:
            placed = None if rng.random() < 0.6 else state.now() - rng.randrange(4 * 86400)
            state.add_option(lot, who, placed_at=placed, via_api=rng.random() < 0.5)
        elif kind == 3:
            state.prolong_option(lot, rng.choice([1, 2]), state.now() + rng.randrange(5 * 86400))
        elif kind == 4:
            state.undo_option(lot, rng.choice([1, 2]))
        elif kind == 5:
            state.prereserve(lot, who, price_cents=100_000, deposit_cents=1_000)
        elif kind == 6:
            if rng.random() < 0.5:
                state.validate_reservation(lot)
            else:
                state.desist(lot, who)
        elif kind == 7:
            state.set_status(lot, rng.choice(["LIBRE", "BLOQUE", "OPTION", "RESV"]))
        elif kind == 8:
            clock.now += rng.choice([60, 1800, 7200, 86400])
    except SandboxRefusal:
        pass
    state.catch_up()
    check(state)
    upto = latest_tick(state.now())
    due = [c for c, x in state.lots.items() if (e := x.next_expiry()) is not None and e <= upto]
    assert due == [], due


@pytest.mark.parametrize("seed", range(12))
def test_derived_counts_and_expiry_mark_match_a_full_scan(seed: int) -> None:
    clock = Clock()
    state = SandboxState(api_key="k", user_key="u", clock=clock)
    state.rules = replace(state.rules, max_options_per_prospect=9)
    state.add_programme("P", "Programme")
    for code in LOTS:
        state.add_lot(code, programme="P")
    for p in PROSPECTS:
        state.add_third(guid=p, name=p)
    rng = random.Random(seed)
    for _ in range(300):
        step(state, clock, rng)
