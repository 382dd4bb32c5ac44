"""A sandbox tenant's test clock, shared by every process through Redis (docs/semantics.md).

A `TestClock` is real time plus an offset that only grows. The offset lives under the
tenant's hash tag (`TenantKeys.clock_offset`, whole seconds) and is only ever raised, by a
script taking the maximum, so two processes moving the clock at once end at the later of
the two instants and nobody can move it back. Each process keeps a copy in its tenants'
`TestClock`s: loaded at start-up, refreshed by the scheduler before each job and by the API
on the clock routes (and every second in the background), and raised here when the clock
is advanced. Real-time TTLs (leases, idempotency, heartbeat) never follow it.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.clock import TestClock
from service.storage.tenant_state import clock_offset, raise_clock_offset
from service.tenancy import Tenant

__all__ = ["ClockBackwards", "advance_offset", "is_sandbox", "refresh", "refresh_all"]


class ClockBackwards(ValueError):
    """A test clock was asked to move to an instant before its now."""

    def __init__(self, now: int, wanted: int) -> None:
        super().__init__(f"the clock reads {now}; {wanted} is in the past")
        self.now = now
        self.wanted = wanted


def is_sandbox(tenant: Tenant) -> bool:
    return tenant.settings.sandbox and isinstance(tenant.clock, TestClock)


def _clock(tenant: Tenant) -> TestClock:
    if not isinstance(tenant.clock, TestClock):
        raise TypeError(f"tenant {tenant.name} has no test clock")
    return tenant.clock


async def refresh(tenant: Tenant) -> int:
    """Adopt the offset recorded in Redis (a no-op when ours is already ahead); returns the
    tenant's now."""
    clock = _clock(tenant)
    store = tenant.store
    stored = await clock_offset(store)
    if stored is not None:
        clock.adopt(stored)
    return clock.now()


async def refresh_all(tenants: Iterable[Tenant]) -> None:
    for tenant in tenants:
        if is_sandbox(tenant):
            await refresh(tenant)


async def advance_offset(tenant: Tenant, instant: int) -> int:
    """Record that the tenant's clock reads at least `instant` now; returns its now.

    The caller checks that `instant` is not in the past; a concurrent move further ahead
    wins (its offset is the larger one) and this clock adopts it.
    """
    clock = _clock(tenant)
    store = tenant.store
    wanted = max(clock.offset, instant - clock.base.now())
    clock.adopt(await raise_clock_offset(store, wanted))
    return clock.now()
