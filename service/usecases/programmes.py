"""Programmes: refreshed from Koban's ``ncDealProcess/GetAll`` by each stock sync, listed
with their lots counted per status (lazy expiry applied, as every read does)."""

from __future__ import annotations

from collections import Counter

import structlog

from service.koban import KobanClient, KobanError, KobanUnavailable
from service.storage.codec import decode_lot
from service.storage.lot_reads import raw_lots
from service.storage.paging import Position, lots_after
from service.storage.programmes import load_programmes, save_programmes
from service.tenancy import Tenant
from statecharts import transitions as tr

__all__ = ["programme_counts", "programmes", "refresh_programmes"]

log = structlog.get_logger("service.usecases.programmes")

SCAN_BATCH = 500
_START: Position = (-(2**53), None)


async def refresh_programmes(tenant: Tenant, koban: KobanClient) -> set[str]:
    """Store the tenant's programmes from GetAll (only its `programmes` when that key is
    set) and return the codes of every process GetAll listed. Koban failing, the previous
    list is kept and its codes returned (a listing aid must not fail the stock sync); with
    no previous list and no `programmes` either, the failure is raised."""
    try:
        found = await koban.get_programs()
    except (KobanError, KobanUnavailable) as exc:
        previous = await load_programmes(tenant.store)
        if not previous and not tenant.settings.programmes:
            raise  # nothing tells the tenant's deals from the others
        log.warning("programmes_not_refreshed", tenant=tenant.name, error=str(exc)[:200])
        return {str(p["code"]) for p in previous}
    own = tenant.settings.programmes
    kept = [p for p in found if not own or p.code in own]
    await save_programmes(tenant.store, [(p.code, p.label) for p in kept])
    return {p.code for p in found}


async def programme_counts(tenant: Tenant, now: int) -> dict[str, Counter[str]]:
    """Programme code → its lots per status. Reads every lot of the tenant, in batches:
    the answer of a listing, not of a hot path."""
    store = tenant.store
    counts: dict[str, Counter[str]] = {}
    position = _START
    while True:
        batch = await lots_after(store, position, SCAN_BATCH)
        raws = await raw_lots(store, [code for code, _ in batch])
        for (code, score), raw in zip(batch, raws, strict=True):
            position = (score, code)
            if raw is not None:
                lot = decode_lot(code, raw)
                tr.expire_due(lot, now, tenant.rules)
                if lot.program is not None:
                    counts.setdefault(lot.program, Counter())[lot.status] += 1
        if len(batch) < SCAN_BATCH:
            return counts


async def programmes(tenant: Tenant) -> list[dict[str, str | None]]:
    return await load_programmes(tenant.store)
