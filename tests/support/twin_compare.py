"""What "agree" means between the Koban sandbox and the service (no tests here).

What it sets up and checks, in detail: docs/testing.md, `twin_compare.py`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from service.sandbox import SandboxState
from service.storage.store import LotStore
from statecharts.model import Lot


def lot_disagreements(
    mine: Lot, theirs: Lot, *, opaque_holders: Collection[str] | None = None
) -> list[str]:
    """How the service's lot `mine` differs from the sandbox's `theirs` (empty: agree)."""
    out: list[str] = []
    if (mine.config, mine.status) != (theirs.config, theirs.status):
        out.append(
            f"state: service {mine.config}/{mine.status}, sandbox {theirs.config}/{theirs.status}"
        )
    pre_mine = mine.prereservation.holder if mine.prereservation else None
    pre_theirs = theirs.prereservation.holder if theirs.prereservation else None
    if pre_mine != pre_theirs:
        out.append(f"préréservation: service {pre_mine}, sandbox {pre_theirs}")
    if mine.intents:
        out.append(f"pending intents left: {[(i.rank, i.holder) for i in mine.intents]}")
    if len(mine.options) != len(theirs.options):
        out.append(
            f"options: service {[(o.rank, o.holder) for o in mine.options]}, "
            f"sandbox {[(o.rank, o.holder) for o in theirs.options]}"
        )
        return out
    pairs = zip(
        sorted(mine.options, key=lambda o: o.rank),
        sorted(theirs.options, key=lambda o: o.rank),
        strict=True,
    )
    for a, b in pairs:
        where = f"rank {a.rank}/{b.rank}"
        if a.rank != b.rank:
            out.append(f"{where}: ranks differ")
        if a.opaque:
            if opaque_holders is not None and b.holder not in opaque_holders:
                out.append(f"{where}: opaque placeholder for {b.holder}")
        elif a.holder != b.holder:
            out.append(f"{where}: holder service {a.holder}, sandbox {b.holder}")
        if (a.expiry is not None or not a.opaque) and a.expiry != b.expiry:
            out.append(f"{where}: expiry service {a.expiry}, sandbox {b.expiry}")
        if a.prolonged != b.prolonged:
            out.append(f"{where}: prolonged service {a.prolonged}, sandbox {b.prolonged}")
        elif a.prolonged and a.deadline != b.deadline:
            out.append(f"{where}: deadline service {a.deadline}, sandbox {b.deadline}")
    return out


async def twin_disagreements(
    store: LotStore,
    state: SandboxState,
    codes: Iterable[str],
    now: int,
    prospects: Iterable[str] = (),
    *,
    opaque_holders: Collection[str] | None = None,
) -> list[str]:
    """Every disagreement over the lots `codes` (read as of `now`, lazy expiry applied)
    and the option counts of `prospects`; each line names the lot or the prospect and
    shows both sides' lots."""
    out: list[str] = []
    for code in codes:
        mine = await store.read(code, now)
        theirs = state.lots.get(code)
        if mine is None or theirs is None:
            out.append(f"lot {code}: service {mine}, sandbox {theirs}")
            continue
        found = lot_disagreements(mine, theirs, opaque_holders=opaque_holders)
        if found:
            out.append(f"lot {code}: {'; '.join(found)}\n    service {mine}\n    sandbox {theirs}")
    for prospect in prospects:
        local = (await store.counts(prospect)).prospect
        koban = state.prospect_option_count(prospect)
        if local != koban:
            out.append(f"prospect {prospect}: service counts {local}, sandbox {koban}")
    return out
