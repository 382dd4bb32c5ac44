"""Pre-reserving a lot (converting the prospect's option) and withdrawing, through Koban.

Validated on a copy under the lot's revision first; Koban's refusal names its code (drift
when Koban does not know a lot we know); after Koban's success a lot the chart now refuses
is still Koban's word: drift recorded, the lot reconciled, the refusal propagated.
"""

from __future__ import annotations

from collections.abc import Awaitable

from service.koban import KobanAnswer, KobanMethod, koban_refusal
from service.storage.store import Counts
from service.usecases.echoes import await_echo
from service.usecases.flow_common import FlowBase, KobanRefusal, one_lot_write
from service.usecases.sync import record_drift
from statecharts import transitions as tr
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot

__all__ = ["Prereservation"]


class Prereservation(FlowBase):
    """`prereserve` and `withdraw` through Koban."""

    @one_lot_write  # it converts the prospect's option, which may move rank 2 up
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

    @one_lot_write
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
