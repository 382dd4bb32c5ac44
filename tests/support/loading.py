"""Bulk loading of lots holding one option each, through the store's own commit path
(no tests here; shared by the scheduler tests and bench/ticks.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.storage.store import LotStore, View, view
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Lot, Option

BATCH = 500
EMPTY: View = view(Lot(""))


def lot_with_option(code: str, expiry: int, placed_at: int, *, noticed: bool = False) -> Lot:
    """A lot holding one option (holder ``h-<code>``) whose effective expiry is `expiry`."""
    option = Option(
        id=f"{code}o",
        rank=1,
        holder=f"h-{code}",
        partner=None,
        placed_at=placed_at,
        deadline=expiry - 60,
        expiry=expiry,
        source="koban",
        original_deadline=expiry - 60,
        via_api=True,
        noticed=noticed,
    )
    return Lot(code, config="one_option", status="OPTION", program="P1", options=[option])


async def load_options(
    store: LotStore,
    codes: Iterable[str],
    expiry: int,
    placed_at: int,
    *,
    noticed: bool = False,
) -> int:
    """Lots `codes`, each with one option due at `expiry` (imported and placed in one
    transition per lot, batched); returns how many were loaded."""
    loaded = 0
    batch: list[list[Any]] = []
    for code in codes:
        lot = lot_with_option(code, expiry, placed_at, noticed=noticed)
        option = lot.options[0]
        events = [
            DomainEvent("lot.imported", placed_at, {"program": "P1", "actor": "sync"}),
            DomainEvent("option.placed", placed_at, tr.option_data(option, "koban")),
        ]
        batch.append(store.transition(EMPTY, lot, events, placed_at))
        if len(batch) == BATCH:
            await store.commit(batch, mode="each")
            loaded += len(batch)
            batch = []
    if batch:
        await store.commit(batch, mode="each")
        loaded += len(batch)
    return loaded
