"""``commit.lua``'s Python side: one lot's transition as the script writes it
(`Transition`), flattened into the script's arguments.

`LotStore.transition` derives a transition from the lot before and after a change; the
expiring notices build theirs from the stored JSON; both go through `LotStore.commit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from service.storage.keys import TenantKeys
from service.storage.scripts import lua_script

LUA_COMMIT = lua_script("commit.lua")


class Transition(NamedTuple):
    """What one lot's transition writes, in commit.lua's order (its header says how)."""

    expected_rev: int  # the revision the lot must still have (0: it must not exist)
    value: bytes  # the lot's new value
    extcode: str
    lot_score: int | str  # the lots index's new score ("": leave it)
    expiry_removals: list[str]  # expiry index members
    expiry_additions: list[Any]  # (score, member, ...)
    count_deltas: list[Any]  # (field, delta, limit, ...); limit 0: unchecked
    tombstones: list[Any]  # (member, score, ...) of ended options
    intent_removals: list[str]  # pending-intent index members
    intent_additions: list[Any]  # (score, member, ...)
    stream: list[bytes]  # CloudEvents, in order
    history: list[bytes]  # history entries, in order


# Items per section entry, for the sections from `expiry_removals` on.
_WIDTHS = (1, 2, 3, 2, 1, 2, 1, 1)


def flatten(mode: str, cap: int, keys: TenantKeys, transitions: Sequence[Transition]) -> list[Any]:
    """``commit.lua``'s flat arguments: each section of a transition prefixed by its count."""
    args: list[Any] = [mode, cap, keys.lot_prefix, keys.history_prefix]
    for t in transitions:
        args.extend(t[:4])
        sections: tuple[list[Any], ...] = t[4:]
        for part, width in zip(sections, _WIDTHS, strict=True):
            args.append(len(part) // width)
            args.extend(part)
    return args
