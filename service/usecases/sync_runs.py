"""One stock sync at a time per tenant, whoever starts it (API, scheduler, CLI).

`claim_sync` takes the tenant's sync lease (real-time TTL renewed while the run lasts, so
a crashed run frees it within a minute) or raises `SyncInProgress`; `SyncClaim.run` then
runs `service.usecases.sync.sync_stock` and records the run's summary (state ``running``
→ ``succeeded`` | ``failed``), which
``GET /v1/tenants/{t}/sync`` shows. Claiming and running are apart so the API can answer
409 at once and run the sync in the background.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from service.koban import KobanClient, KobanError, KobanUnavailable
from service.storage.lease import Lease, LeaseLost
from service.storage.leases import sync_lease
from service.storage.tenant_state import load_sync_run, save_sync_run
from service.tenancy import Tenant
from service.usecases.sync import Progress, SyncReport, sync_stock

__all__ = ["SYNC_LEASE_TTL_MS", "SyncClaim", "SyncInProgress", "SyncRun", "claim_sync", "last_run"]

SYNC_LEASE_TTL_MS = 60_000
RunState = Literal["running", "succeeded", "failed"]


class SyncInProgress(Exception):
    """Another stock sync of this tenant is running (here or in another process)."""


@dataclass(slots=True)
class SyncRun:
    state: RunState
    full: bool
    started_at: int  # the tenant clock's instant the run started at (its `now`)
    finished_at: int | None = None
    since: int | None = None
    pages: int = 0
    seen: int = 0
    imported: int = 0
    changed: int = 0
    unchanged: int = 0
    deferred: int = 0
    drift: int = 0
    error: str | None = None
    seconds: float | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # reason → deals not mirrored

    def absorb(self, report: SyncReport) -> None:
        self.since = report.since
        for name in ("pages", "seen", "imported", "changed", "unchanged", "deferred", "drift"):
            setattr(self, name, getattr(report, name))
        self.skipped = dict(report.skipped)


async def last_run(tenant: Tenant) -> SyncRun | None:
    data = await load_sync_run(tenant.store)
    return None if data is None else SyncRun(**data)


class SyncClaim:
    """A claimed sync lease; `run` once."""

    def __init__(self, tenant: Tenant, lease: Lease) -> None:
        self.tenant = tenant
        self.lease = lease

    async def _record(self, run: SyncRun) -> None:
        await save_sync_run(self.tenant.store, asdict(run))

    async def run(
        self, koban: KobanClient, now: int, *, full: bool = False, progress: Progress | None = None
    ) -> SyncReport:
        run = SyncRun(state="running", full=full, started_at=now)
        started = time.monotonic()
        async with self.lease.kept():
            await self._record(run)
            try:
                report = await sync_stock(self.tenant, koban, now, full=full, progress=progress)
            except (
                KobanUnavailable,
                KobanError,
                OSError,
                LeaseLost,
                asyncio.CancelledError,
            ) as exc:
                run.state, run.error = "failed", f"{type(exc).__name__}: {exc}".rstrip(": ")
                run.finished_at = self.tenant.clock.now()
                run.seconds = round(time.monotonic() - started, 3)
                await asyncio.shield(self._record(run))
                raise
            run.absorb(report)
            run.state, run.finished_at = "succeeded", self.tenant.clock.now()
            run.seconds = round(time.monotonic() - started, 3)
            await self._record(run)
            return report

    async def release(self) -> None:
        """Give the lease back without running (the caller changed its mind)."""
        await self.lease.release()


async def claim_sync(tenant: Tenant, ttl_ms: int = SYNC_LEASE_TTL_MS) -> SyncClaim:
    lease = sync_lease(tenant.store, ttl_ms)
    if not await lease.acquire():
        raise SyncInProgress(f"a stock sync of tenant {tenant.name} is already running")
    return SyncClaim(tenant, lease)
