"""Prolonging and cancelling an option addressed by rank, through Koban (docs/flows.md).

The rank is checked under the lot's revision right before calling Koban; after Koban's
success the change is applied to the option seen then, by id, wherever its rank is now.
A rank that moved, or an option that ended meanwhile, is drift: the lot is reconciled.
Each write holds the lot's write lease, and records the webhook Koban owes (an echo).
"""

from __future__ import annotations

import copy

from service.koban import KobanAnswer, KobanMethod, koban_refusal
from service.storage.store import Counts
from service.usecases.echoes import await_echo
from service.usecases.flow_common import FlowBase, KobanRefusal, one_lot_write
from service.usecases.sync import mark_needs_sync, record_drift
from statecharts import transitions as tr
from statecharts.drift import drift_event
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Option
from statecharts.ticks import ceil_tick, to_iso

__all__ = ["ByRank"]


class ByRank(FlowBase):
    """`prolong` and `cancel`: an option by its rank, through Koban."""

    @one_lot_write
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
            if option.prolonged and option.expiry == ceil_tick(until):
                # The webhook was faster but told only the tick (a Koban whose PrgDate is
                # the moment of prolongation): the deadline we sent is the exact one.
                before = option.deadline
                option.deadline = until
                previous = None if before is None else to_iso(before)
                data = tr.option_data(option, "api", previousDeadline=previous)
                return [DomainEvent("option.deadline_confirmed", now, data)], option
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

    @one_lot_write
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
