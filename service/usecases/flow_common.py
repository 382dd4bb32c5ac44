"""What the flows through Koban share: their results, Koban's refusals, and the base
that records what Koban did (keeping it in memory while the store is down), serializes a
lot's Koban writes under its write lease, and validates before calling Koban.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from service.koban import KobanAnswer, KobanClient, KobanOutcomeUnknown
from service.storage.errors import STORE_DOWN
from service.storage.lease import Held
from service.storage.leases import lot_write_lease
from service.storage.store import ChangeFn, Counts, StoreConflict
from service.tenancy import Tenant
from service.usecases.sync import mark_needs_sync
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Option

__all__ = [
    "LOT_WRITE_LEASE_MS",
    "FlowBase",
    "KobanRefusal",
    "LotValidate",
    "OptionValidate",
    "Pending",
    "Placed",
    "one_lot_write",
]

# A Koban write on a lot's options holds the lot's write lease at most this long unrenewed
# (renewed every third of it while the call lasts; a process dying mid-call, or a release
# lost to a Redis outage, frees the lot within it); waiters poll this often.
LOT_WRITE_LEASE_MS = 5_000
LOT_WRITE_POLL_S = 0.02
# The lot's write lease held by the running by-rank write, checked right before its Koban
# call: a lease that lapsed meanwhile may let another write reach the same ranks.
_LOT_WRITE: contextvars.ContextVar[Held | None] = contextvars.ContextVar("lot_write", default=None)
T = TypeVar("T")

# (copy to run the transition on, the lot itself, now) → what the caller needs.
OptionValidate = Callable[[Lot, Lot, int], Option]
LotValidate = Callable[[Lot, Lot, int], Lot]


class KobanRefusal(RuleViolation):
    """Koban refused (or its GetLotStatus showed it would refuse): ``source`` is ``koban``
    and ``koban_code`` is Koban's own code (None when Koban gave none)."""

    source: ClassVar[str] = "koban"

    def __init__(
        self,
        code: ErrorCode,
        koban_code: str | None,
        message: str | None = None,
        *,
        drift: bool = False,
    ) -> None:
        super().__init__(code, message)
        self._koban_code = koban_code
        self.drift = drift

    @property
    def koban_code(self) -> str | None:
        return self._koban_code

    def __repr__(self) -> str:
        return f"KobanRefusal({self.code.value!r}, {self._koban_code!r}, {self.message!r})"

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[KobanRefusal], tuple[ErrorCode, str | None, str]]:
        return (type(self), (self.code, self._koban_code, self.message))


@dataclass(frozen=True, slots=True)
class Placed:
    """Koban placed the option and the service recorded it."""

    extcode: str
    option: Option
    intent_id: str


@dataclass(frozen=True, slots=True)
class Pending:
    """Koban may or may not have placed it: the intent stays pending (202)."""

    extcode: str
    intent_id: str
    rank: int
    third: str


_F = TypeVar("_F", bound="FlowBase")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_lot_write(
    method: Callable[Concatenate[_F, str, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[_F, str, _P], Coroutine[Any, Any, _R]]:
    """The write `method` (its first argument the lot's extcode) under the lot's write
    lease (`FlowBase._lot_write`): one such Koban write per lot at a time."""

    @functools.wraps(method)
    async def serialized(self: _F, extcode: str, /, *a: _P.args, **kw: _P.kwargs) -> _R:
        async with self._lot_write(extcode):
            return await method(self, extcode, *a, **kw)

    return serialized


class FlowBase:
    """Outbound operations of one tenant through Koban: the shared state and steps."""

    def __init__(
        self,
        tenant: Tenant,
        koban: KobanClient,
        *,
        predecessor_wait_s: float = 5.0,
        poll_s: float = 0.25,
        lot_write_wait_s: float = 5.0,
    ) -> None:
        self.tenant = tenant
        self.koban = koban
        self.store = tenant.store
        self.rules = tenant.rules
        self.predecessor_wait_s = predecessor_wait_s
        self.poll_s = poll_s
        self.lot_write_wait_s = lot_write_wait_s
        # What Koban did and the store could not record yet, per lot, oldest first.
        self._unrecorded: dict[str, list[tuple[ChangeFn[Any], int]]] = {}
        self._catching_up = asyncio.Lock()

    def _now(self) -> int:
        return self.tenant.clock.now()

    async def _record(self, extcode: str, change: ChangeFn[T], now: int) -> T:
        """Record a change Koban has made; if the store is unreachable, keep it for
        `_catch_up` (then re-raise: 503)."""
        try:
            return await self.store.mutate(extcode, change, now=now)
        except STORE_DOWN:
            self._unrecorded.setdefault(extcode, []).append((change, now))
            raise

    async def _catch_up(self, extcode: str) -> None:
        """Before any write to `extcode`: record what Koban did that the store missed
        (each change finds its option by id and tolerates what happened since; one the
        chart refuses now is left to reconciliation)."""
        if extcode not in self._unrecorded:
            return
        async with self._catching_up:
            kept = self._unrecorded.get(extcode, [])
            while kept:
                change, at = kept[0]
                with contextlib.suppress(RuleViolation):
                    await self.store.mutate(extcode, change, now=at)  # store down: 503
                kept.pop(0)
            self._unrecorded.pop(extcode, None)
        await mark_needs_sync(self.tenant, extcode)  # Koban moved while we were blind

    @contextlib.asynccontextmanager
    async def _lot_write(self, extcode: str) -> AsyncIterator[None]:
        """One Koban write on the lot's existing options at a time, across processes.

        Koban addresses options by rank and ranks move when one ends: a Prolong or Undo
        checked against ranks that a concurrent Undo (or a préréservation converting rank
        1) is about to shift would reach another prospect's option in Koban. Under this
        lease (`TenantKeys.lot_writes`, real time, renewed while the call lasts) the check,
        the Koban call and the local record of one such write happen before the next
        write's check; reconciliation leaves the lot alone meanwhile. A write that cannot
        get it within `lot_write_wait_s` is answered 503 STORE_UNAVAILABLE (retry)."""
        lease = lot_write_lease(self.store, extcode, LOT_WRITE_LEASE_MS)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.lot_write_wait_s
        while not await lease.acquire():
            if loop.time() >= give_up:
                raise StoreConflict(
                    f"lot {extcode}: another change of its options is in flight with Koban"
                )
            await asyncio.sleep(min(self.poll_s, LOT_WRITE_POLL_S))
        async with lease.kept(cancel_on_loss=False) as held:
            token = _LOT_WRITE.set(held)
            try:
                yield
            finally:
                _LOT_WRITE.reset(token)

    async def _check(self, extcode: str, validate: OptionValidate) -> Option:
        """Validate on a copy under the lot's current revision; the option addressed."""
        await self._catch_up(extcode)
        now = self._now()

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Option]:
            return [], validate(copy.deepcopy(lot), lot, now)

        return await self.store.mutate(extcode, change, now=now)

    async def _check_lot(self, extcode: str, validate: LotValidate) -> None:
        await self._catch_up(extcode)
        now = self._now()

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], None]:
            validate(copy.deepcopy(lot), lot, now)
            return [], None

        await self.store.mutate(extcode, change, now=now)

    async def _call(self, extcode: str, request: Coroutine[Any, Any, KobanAnswer]) -> KobanAnswer:
        held = _LOT_WRITE.get()
        if held is not None and held.lost:
            request.close()  # never sent
            raise StoreConflict(
                f"lot {extcode}: the write lease lapsed before the Koban call; nothing was sent"
            )
        try:
            return await request
        except KobanOutcomeUnknown:
            await mark_needs_sync(self.tenant, extcode)
            raise
