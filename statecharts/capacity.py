"""How many options a lot holds at most: the one test of a full lot (Koban's code 05).

Asked by the chart's ``full`` fact (`transitions.place_facts`, `place_option`), the
webhook pre-check, the availability answer, the placement flow reading ``GetLotStatus``
and an ``Add`` refusal (`drift.add_refusal_contradicts`). The chart refuses with
``LOT_FULL`` (`lot_chart`), `errors.KOBAN_CODE` maps it to 05.
"""

from __future__ import annotations

__all__ = ["MAX_OPTIONS", "lot_full"]

MAX_OPTIONS = 2  # rank 1 and rank 2


def lot_full(occupied: int) -> bool:
    """Whether a lot holding `occupied` options (the caller says whether pending intents
    count) can take no other one."""
    return occupied >= MAX_OPTIONS
