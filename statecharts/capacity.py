"""How many options a lot holds at most: the one test of a full lot.

Koban's refusal 05, the chart's ``LOT_FULL`` guard, the pre-check's answer, the placement
flow's reading of ``GetLotStatus`` and its reading of an ``Add`` refusal all ask this.
"""

from __future__ import annotations

__all__ = ["MAX_OPTIONS", "lot_full"]

MAX_OPTIONS = 2  # rank 1 and rank 2


def lot_full(occupied: int) -> bool:
    """Whether a lot holding `occupied` options (the caller says whether pending intents
    count) can take no other one."""
    return occupied >= MAX_OPTIONS
