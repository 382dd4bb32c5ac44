"""Writes that go through Koban (SPEC §4): reserve → call → confirm, never a lock across
the network.

Placement (:meth:`OptionFlows.place`):

1. **Reserve** — ``store.reserve_placement``: the rules against local state + pending
   intents; a refusal is a plain :class:`RuleViolation` (``source: local``). The intent
   holds the next rank and counts toward the prospect's limit.
2. **Call** — ``GetLotStatus`` (Koban requires it before every ``Add``), compared with the
   lot as of now: Koban's next rank must be the intent's rank. When it is lower only
   because an earlier intent of ours is still on its way to Koban, we poll briefly (the
   predecessor's ``Add`` lands, or it is released and our intent moves down a rank).
   Otherwise Koban shows local state is wrong: the intent is released, drift recorded, the
   lot queued for reconciliation and a :class:`KobanRefusal` raised (``LOT_FULL`` 05 when
   Koban is full, ``LOT_PRERESERVED`` 04 on -2, ``LOT_UNKNOWN`` on -1,
   ``RANK_NOT_AVAILABLE`` when the ranks disagree). Within ``drift_tolerance`` after a tick,
   Koban reporting more options than we hold is Koban's expiry lag: refused the same way
   but not recorded as drift. Then ``Add`` with the intent's rank and ``DateOption`` = now.
3. **Confirm** — ``Add`` succeeded: the intent becomes the option (``placedAt`` = the
   ``DateOption`` sent; ``deadlineSource: estimated`` until Koban's own value arrives by
   the placed webhook or reconciliation). Koban refused: the intent is released and a
   :class:`KobanRefusal` raised with Koban's code; when the code contradicts local state
   (05 with fewer than two local options, 02 while LIBRE/OPTION, 04 while not
   pre-reserved, an unknown code) the release carries a ``sync.drift_detected`` event (one
   transition) and the lot is queued in ``kol:{t}:needsync``.
4. **Unknown outcome** — ``KobanOutcomeUnknown`` (sent, no answer): the intent stays
   pending and :class:`Pending` is returned; ``service.usecases.intents`` resolves it. Koban
   unavailable before anything was sent (``KobanUnavailable``) or an unexpected answer
   (``KobanError``): the intent is released and the exception propagates (503 / 502).

Options addressed by rank (:meth:`prolong`, :meth:`cancel`): the rank is checked under the
lot's revision right before calling Koban (a ``mutate`` whose change only validates, on a
copy: ``OPTION_MOVED`` / ``OPTION_NOT_FOUND`` / ``ALREADY_PROLONGED`` … and nothing is
sent). The option seen there is remembered by id; after Koban's success the change is
applied to *that option* (wherever its rank is now). If the lot changed between the check
and the apply:

* the option is still there (maybe at another rank) → applied to it; when its rank moved,
  Koban may have acted on whichever option held that rank on its side, so drift is
  recorded and the lot reconciled;
* it already carries the change (Koban's own webhook was faster) → nothing more;
* it ended meanwhile → a cancel is done anyway (the option is gone, which was the goal) and
  a prolongation answers ``OPTION_NOT_FOUND``; when it ended by expiry, Koban's ``Undo`` /
  ``Prolong`` on that rank may have hit another option, so drift is recorded and the lot
  reconciled.

An unknown outcome of ``Prolong`` / ``Undo`` / ``Preresv`` / ``Desist`` queues the lot for
reconciliation (the webhook, when it comes, applies the change) and re-raises.

A ``Prolong`` / ``Undo`` / ``Desist`` applied from Koban's answer records, in the same
transition, the webhook Koban still owes for it (`echoes`): arriving late, after the
lot moved on (the prospect placed a new option there, another préréservation was made), it
is a replay rather than a change to the lot as it is by then.

Koban did it but the store failed right after (Redis unreachable: 503 to the caller): the
change to record is kept in memory and applied before the next write to that lot through
these flows (the lot is then queued for reconciliation). Without it, the caller's retry
saw the option still at its rank and Koban — which addresses options by rank — cancelled
or prolonged whichever option held that rank there by then: another prospect's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.koban import (
    KobanAnswer,
    KobanClient,
    KobanError,
    KobanMethod,
    KobanOutcomeUnknown,
    KobanUnavailable,
    LotStatus,
    koban_refusal,
)
from service.storage.lease import Held, Lease
from service.storage.store import ChangeFn, Counts, StoreConflict, new_id
from service.tenancy import Tenant
from service.usecases.echoes import await_echo
from service.usecases.sync import (
    OPTIONED,
    drift_event,
    in_drift_tolerance,
    koban_occupancy,
    mark_needs_sync,
    record_drift,
)
from statecharts import transitions as tr
from statecharts.errors import KOBAN_CODE, ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Option

_ADD_CODES = frozenset({"01", "02", "03", "04", "05"})
_STORE_DOWN = (RedisConnectionError, RedisTimeoutError)
# A Koban write on a lot's options holds the lot's write lease at most this long unrenewed
# (renewed every third of it while the call lasts; a process dying mid-call, or a release
# lost to a Redis outage, frees the lot within it); waiters poll this often.
LOT_WRITE_LEASE_MS = 5_000
# The lot's write lease held by the running by-rank write, checked right before its Koban
# call: a lease that lapsed meanwhile may let another write reach the same ranks.
_LOT_WRITE: contextvars.ContextVar[Held | None] = contextvars.ContextVar("lot_write", default=None)
LOT_WRITE_POLL_S = 0.02
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


def _refusal_drift(code: str | None, lot: Lot) -> bool:
    """Does Koban's Add refusal `code` contradict the lot as we hold it?"""
    if code not in _ADD_CODES:
        return True  # undocumented: treat as a contradiction and reconcile
    if code == "05":
        return len(lot.options) < 2
    if code == "02":
        return lot.config in ("free", *OPTIONED)
    if code == "04":
        return lot.config != "prereserved"
    return False  # 01 / 03: counts on other lots, not this lot's state


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _one_lot_write(
    method: Callable[Concatenate[OptionFlows, str, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[OptionFlows, str, _P], Coroutine[Any, Any, _R]]:
    """The write `method` (its first argument the lot's extcode) under the lot's write
    lease (`OptionFlows._lot_write`): one such Koban write per lot at a time."""

    @functools.wraps(method)
    async def serialized(self: OptionFlows, extcode: str, /, *a: _P.args, **kw: _P.kwargs) -> _R:
        async with self._lot_write(extcode):
            return await method(self, extcode, *a, **kw)

    return serialized


class OptionFlows:
    """Outbound operations of one tenant through Koban."""

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
        except _STORE_DOWN:
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

    # ------------------------------------------------------------------ placement

    async def place(
        self,
        extcode: str,
        third: str,
        partner: str | None = None,
        rank: int | None = None,
        intent_id: str | None = None,
    ) -> Placed | Pending:
        await self._catch_up(extcode)
        reserved: list[bytes] = []
        intent = await self.store.reserve_placement(
            extcode, third, partner, self._now(), rank, intent_id, written=reserved
        )
        iid = intent.id
        sent = False
        ready = intent.rank
        try:
            found, seen = await self._await_rank(extcode, iid, reserved[0] if reserved else None)
            if found is None:  # resolved by someone else meanwhile: its resolution answers
                return Pending(extcode, iid, ready, third)
            ready = found
            date_option = self._now()
            sent = True
            answer = await self.koban.add_option(
                extcode, third, ready, date_option, partner_guid=partner
            )
        except KobanOutcomeUnknown:
            return Pending(extcode, iid, ready, third)
        except (KobanUnavailable, KobanError, RuleViolation) as exc:
            # Nothing reached Koban (or Koban answered in a way that means not applied).
            await self.store.release_intent(extcode, iid, self._now())
            if sent and isinstance(exc, KobanError) and exc.status == 404:
                # Add answered 404 for a lot GetLotStatus knew: Koban does not know the
                # prospect (the doc lists no code for it; README "Sandbox").
                raise KobanRefusal(ErrorCode.PROSPECT_UNKNOWN, None, str(exc)) from exc
            if sent and isinstance(exc, KobanError):
                # An answer the doc does not describe (a 409 without a code, say): nothing
                # was placed, but Koban saw the lot otherwise than we do: re-read it.
                await mark_needs_sync(self.tenant, extcode)
            raise
        except Exception:
            if not sent:
                await self.store.release_intent(extcode, iid, self._now())
            raise  # after sending: the intent stays pending, resolution settles it
        if not answer.success:
            await self._refused_add(extcode, iid, answer)
        return await self._confirm(extcode, iid, third, partner, date_option, seen)

    async def _await_rank(
        self, extcode: str, iid: str, reserved: bytes | None = None
    ) -> tuple[int | None, bytes | None]:
        """GetLotStatus until Koban's next rank is our intent's rank → that rank (None when
        the intent is no longer pending: an operator or a webhook resolved it), and the
        lot's stored value it was judged on (the confirmation decides on it first).

        `reserved`: the value the reservation wrote; Koban's first answer is judged on it
        instead of a fresh read (one Redis round trip less a placement). What changed the
        lot since is seen all the same: by the confirmation's revision check, which then
        decides again on a fresh read, or by the next poll (README "Semantics").

        Raises :class:`KobanRefusal` (after releasing the intent) when Koban's view shows
        local state is wrong, or :class:`RuleViolation` ``RANK_NOT_AVAILABLE`` when an
        earlier placement of ours is still in flight after `predecessor_wait_s`.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.predecessor_wait_s
        while True:
            status = await self.koban.get_lot_status(extcode)
            now = self._now()
            lot: Lot | None
            raw: bytes | None
            if reserved is not None:
                lot, raw, reserved = self.store.as_of(extcode, reserved, now), reserved, None
            else:
                lot, raw = await self.store.read_with_raw(extcode, now)
            intent = tr.find_intent(lot, iid) if lot is not None else None
            if lot is None or intent is None:
                return None, None
            verdict = self._judge(status, lot, intent.rank, now)
            if verdict is None:
                return intent.rank, raw
            if verdict != "wait":
                await self._koban_disagrees(extcode, iid, status, lot, intent.rank, verdict, now)
            if loop.time() >= give_up:
                raise RuleViolation(
                    ErrorCode.RANK_NOT_AVAILABLE,
                    f"rank {intent.rank - 1} of lot {extcode} is still being placed; retry",
                )
            await asyncio.sleep(self.poll_s)

    def _judge(self, status: LotStatus, lot: Lot, rank: int, now: int) -> str | None:
        """None: go on with `rank`; "wait": a predecessor of ours is in flight; otherwise
        the refusal kind: full | prereserved | unknown | ahead | behind."""
        if status.result == -1:
            return "unknown"
        if status.result == -2:
            return "prereserved"
        k = koban_occupancy(status)
        if k is None:
            return "unknown"
        if k >= 2:
            return "full"
        if k == rank - 1:
            return None
        if k > rank - 1:
            return "ahead"  # Koban holds an option we do not know (or has not expired it)
        # Koban holds fewer options than the ranks below ours.
        return "wait" if k >= len(lot.options) else "behind"

    async def _koban_disagrees(
        self,
        extcode: str,
        iid: str,
        status: LotStatus,
        lot: Lot,
        rank: int,
        verdict: str,
        now: int,
    ) -> None:
        code: ErrorCode
        if verdict == "full":
            code = ErrorCode.LOT_FULL
        elif verdict == "prereserved":
            code = ErrorCode.LOT_PRERESERVED
        elif verdict == "unknown":
            code = ErrorCode.LOT_UNKNOWN
        else:
            code = ErrorCode.RANK_NOT_AVAILABLE
        # Koban showing more options than we hold right after a tick is its expiry lag.
        lag = verdict in ("full", "ahead") and in_drift_tolerance(self.tenant, now)
        drift = not lag
        message = (
            f"Koban's GetLotStatus (Result {status.result}, MaxRank {status.max_rank}) "
            f"disagrees with rank {rank} of lot {extcode}"
            + ("; Koban has not yet expired the options due at the latest tick" if lag else "")
        )
        data: dict[str, object] = {
            "localStatus": lot.status,
            "localOptions": len(lot.options),
            "kobanResult": status.result,
            "kobanMaxRank": status.max_rank,
            "intentId": iid,
            "rank": rank,
        }
        if status.end_date is not None:
            data["endDate"] = status.end_date
        await self._release(extcode, iid, now, drift, "lot_status", data)
        raise KobanRefusal(code, KOBAN_CODE[code], message, drift=drift)

    async def _release(
        self,
        extcode: str,
        iid: str,
        now: int,
        drift: bool,
        reason: str,
        data: dict[str, object],
    ) -> None:
        """Drop the intent, with a drift event in the same transition when `drift`."""

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], None]:
            events = tr.release_intent(lot, iid, now, self.rules)
            if drift:
                events.append(drift_event(now, "api", reason, **data))
            return events, None

        await self.store.mutate(extcode, change, now=now)
        if drift:
            await mark_needs_sync(self.tenant, extcode)

    async def _refused_add(self, extcode: str, iid: str, answer: KobanAnswer) -> None:
        now = self._now()
        code = koban_refusal(KobanMethod.ADD, answer.error_code)

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], bool]:
            events = tr.release_intent(lot, iid, now, self.rules)
            drift = _refusal_drift(answer.error_code, lot)
            if drift:
                events.append(
                    drift_event(
                        now,
                        "api",
                        "koban_refused",
                        method="Add",
                        kobanCode=answer.error_code,
                        localStatus=lot.status,
                        localOptions=len(lot.options),
                        intentId=iid,
                    )
                )
            return events, drift

        drift = await self.store.mutate(extcode, change, now=now)
        if drift:
            await mark_needs_sync(self.tenant, extcode)
        raise KobanRefusal(code, answer.error_code, answer.message, drift=drift)

    async def _confirm(
        self,
        extcode: str,
        iid: str,
        third: str,
        partner: str | None,
        placed_at: int,
        seen: bytes | None = None,
    ) -> Placed | Pending:
        """Koban placed it: the intent becomes the option. If the intent is gone (a webhook
        or a resolution got there first) the option it became is returned; if it was
        released meanwhile, Koban's placement is recorded anyway (Koban is the authority).

        `seen`: the lot as read right before the Add; the transition is first decided on
        it (no read), and on a fresh read only if the lot changed since (`mutate`'s
        `known`: the commit's revision check tells)."""
        now = self._now()
        oid = new_id()

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Option | None]:
            if tr.find_intent(lot, iid) is not None:
                events = tr.confirm_placement(lot, iid, oid, placed_at, self.rules)
                return events, lot.option_of(third)
            existing = lot.option_of(third)
            if existing is not None:
                return [], existing
            trial = copy.deepcopy(lot)
            try:
                tr.place_option(
                    trial,
                    option_id=oid,
                    holder=third,
                    partner=partner,
                    placed_at=placed_at,
                    rules=self.rules,
                    via_api=True,
                    actor="api",
                )
            except RuleViolation:
                reason = "placed_but_not_recordable"
                return [drift_event(now, "api", reason, intentId=iid, thirdGuid=third)], None
            events = tr.place_option(
                lot,
                option_id=oid,
                holder=third,
                partner=partner,
                placed_at=placed_at,
                rules=self.rules,
                via_api=True,
                actor="api",
            )
            return events, lot.option_of(third)

        option = await self.store.mutate(extcode, change, now=now, known=seen)
        if option is None:
            await mark_needs_sync(self.tenant, extcode)
            return Pending(extcode, iid, 0, third)  # rank unknown: reconciliation settles it
        return Placed(extcode, option, iid)

    # ------------------------------------------------------------------ by rank

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
        lease = Lease(self.store.redis, self.store.keys.lot_writes(extcode), LOT_WRITE_LEASE_MS)
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

    @_one_lot_write
    async def prolong(
        self, extcode: str, rank: int, until: int, third: str | None = None
    ) -> Option:
        def validate(trial: Lot, lot: Lot, now: int) -> Option:
            tr.prolong_option(trial, rank, until, third, now, self.rules)
            option = lot.option_at(rank)
            assert option is not None
            return copy.copy(option)

        seen = await self._check(extcode, validate)
        answer = await self._call(extcode, self.koban.prolong_option(extcode, rank, until))
        now = self._now()
        if not answer.success:
            await self._refused_by_rank(extcode, KobanMethod.PROLONG, answer, seen, now)

        def apply(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Option | None]:
            option = next((o for o in lot.options if o.id == seen.id), None)
            if option is None:
                return _vanished(seen, rank, now, "Prolong"), None
            if option.prolonged and option.deadline == until:
                return [], option  # the option-prolonged webhook was faster
            events = tr.prolong_option(lot, option.rank, until, option.holder, now, self.rules)
            await_echo(lot, "option_prolonged", option.holder, until)
            if option.rank != rank:
                events.append(_moved(seen, option, rank, now, "Prolong"))
            return events, option

        option = await self._record(extcode, apply, now)
        if option is None or option.rank != rank:
            await mark_needs_sync(self.tenant, extcode)
        if option is None:
            raise RuleViolation(
                ErrorCode.OPTION_NOT_FOUND,
                f"the option at rank {rank} ended while Koban prolonged it; "
                "the lot is being reconciled",
            )
        return option

    @_one_lot_write
    async def cancel(self, extcode: str, rank: int, third: str | None = None) -> Option:
        def validate(trial: Lot, lot: Lot, now: int) -> Option:
            tr.cancel_option(trial, rank, third, now, self.rules)
            option = lot.option_at(rank)
            assert option is not None
            return copy.copy(option)

        seen = await self._check(extcode, validate)
        answer = await self._call(extcode, self.koban.undo_option(extcode, rank))
        now = self._now()
        if not answer.success:
            await self._refused_by_rank(extcode, KobanMethod.UNDO, answer, seen, now)

        def apply(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], tuple[Option, bool]]:
            option = next((o for o in lot.options if o.id == seen.id), None)
            if option is None:
                expired = seen.expiry is not None and seen.expiry <= now
                # Gone by the option-cancelled webhook: fine. Gone by expiry: Koban's Undo
                # may have hit the option promoted on its side.
                return (_vanished(seen, rank, now, "Undo") if expired else []), (seen, expired)
            ended = copy.copy(option)
            events = tr.cancel_option(lot, option.rank, option.holder, now, self.rules)
            await_echo(lot, "option_cancelled", option.holder)
            moved = option.rank != rank
            if moved:
                events.append(_moved(seen, option, rank, now, "Undo"))
            return events, (ended, moved)

        option, drift = await self._record(extcode, apply, now)
        if drift:
            await mark_needs_sync(self.tenant, extcode)
        return option

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

    async def _refused_by_rank(
        self, extcode: str, method: KobanMethod, answer: KobanAnswer, seen: Option, now: int
    ) -> None:
        code = koban_refusal(method, answer.error_code)
        # We checked just before: the option was there (and, for Prolong, not prolonged).
        await record_drift(
            self.tenant,
            extcode,
            now,
            "api",
            "koban_refused",
            method=method.value,
            kobanCode=answer.error_code,
            optionId=seen.id,
            rank=seen.rank,
        )
        raise KobanRefusal(code, answer.error_code, answer.message, drift=True)

    # ------------------------------------------------------------------ préréservation

    @_one_lot_write  # it converts the prospect's option, which may move rank 2 up
    async def prereserve(
        self,
        extcode: str,
        third: str,
        price_cents: int,
        deposit_cents: int,
        partner: str | None = None,
    ) -> Lot:
        def validate(trial: Lot, lot: Lot, now: int) -> Lot:
            tr.prereserve(trial, third, partner, price_cents, deposit_cents, now, self.rules)
            return lot

        await self._check_lot(extcode, validate)
        answer = await self._call(
            extcode,
            self.koban.add_prereservation(extcode, third, price_cents, deposit_cents, partner),
        )
        if not answer.success:
            await self._refused_lot(extcode, KobanMethod.PRERESV, answer, ErrorCode.LOT_UNKNOWN)
        return await self._apply_after_koban(
            extcode,
            "Preresv",
            self.store.prereserve(extcode, third, partner, price_cents, deposit_cents, self._now()),
        )

    @_one_lot_write
    async def withdraw(self, extcode: str, third: str) -> Lot:
        def validate(trial: Lot, lot: Lot, now: int) -> Lot:
            tr.withdraw(trial, third, now, self.rules)
            return lot

        await self._check_lot(extcode, validate)
        answer = await self._call(extcode, self.koban.desist(extcode, third))
        if not answer.success:
            await self._refused_lot(extcode, KobanMethod.DESIST, answer, ErrorCode.LOT_UNKNOWN)
        now = self._now()

        def apply(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Lot]:
            if lot.config not in ("prereserved", "reserved"):
                return [], lot  # the reservation-withdrawn webhook was faster
            events = tr.withdraw(lot, third, now, self.rules)
            await_echo(lot, "reservation_withdrawn", None)
            return events, lot

        return await self._apply_after_koban(extcode, "Desist", self._record(extcode, apply, now))

    async def _check_lot(self, extcode: str, validate: LotValidate) -> None:
        await self._catch_up(extcode)
        now = self._now()

        def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], None]:
            validate(copy.deepcopy(lot), lot, now)
            return [], None

        await self.store.mutate(extcode, change, now=now)

    async def _refused_lot(
        self,
        extcode: str,
        method: KobanMethod,
        answer: KobanAnswer,
        lot_level: ErrorCode,
    ) -> None:
        code = koban_refusal(method, answer.error_code)
        known = answer.error_code in ("01", "02")
        drift = code is lot_level or not known  # Koban does not know a lot we know
        if drift:
            await record_drift(
                self.tenant,
                extcode,
                self._now(),
                "api",
                "koban_refused",
                method=method.value,
                kobanCode=answer.error_code,
            )
        raise KobanRefusal(code, answer.error_code, answer.message, drift=drift)

    async def _apply_after_koban(self, extcode: str, method: str, apply: Awaitable[Lot]) -> Lot:
        """Koban did it; if the lot changed so that the chart now refuses, Koban still
        wins: drift is recorded and the lot reconciled, and the refusal propagates."""
        try:
            return await apply
        except RuleViolation as exc:
            await record_drift(
                self.tenant,
                extcode,
                self._now(),
                "api",
                "applied_in_koban_only",
                method=method,
                refusal=exc.code.value,
            )
            raise


def _vanished(seen: Option, rank: int, now: int, method: str) -> list[DomainEvent]:
    return [
        drift_event(
            now,
            "api",
            "option_ended_during_call",
            method=method,
            optionId=seen.id,
            rank=rank,
            thirdGuid=seen.holder,
        )
    ]


def _moved(seen: Option, option: Option, rank: int, now: int, method: str) -> DomainEvent:
    return drift_event(
        now,
        "api",
        "rank_moved_during_call",
        method=method,
        optionId=seen.id,
        rank=rank,
        newRank=option.rank,
        thirdGuid=seen.holder,
    )
