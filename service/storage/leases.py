"""The tenant's named leases (`Lease`: ``SET NX PX``, renewed while kept).

- a lot's write lease: one Koban write on the lot's options at a time, across processes;
- the stock sync's lease: one sync per tenant;
- a tick's lease: one daemon processes a tick.
"""

from __future__ import annotations

from service.storage.lease import Lease
from service.storage.store import LotStore

__all__ = ["lot_write_lease", "sync_lease", "tick_lease"]


def lot_write_lease(store: LotStore, extcode: str, ttl_ms: int) -> Lease:
    return Lease(store.redis, store.keys.lot_writes(extcode), ttl_ms)


def sync_lease(store: LotStore, ttl_ms: int) -> Lease:
    return Lease(store.redis, store.keys.sync_lease, ttl_ms)


def tick_lease(store: LotStore, tick: int, ttl_ms: int) -> Lease:
    return Lease(store.redis, store.keys.tick_lease(tick), ttl_ms)
