"""A validated préréservation (a complete dossier) through Koban's ``ncPreresv/AddValid``.

The same steps as the initial préréservation (`prereservation`): validated on a copy of
the lot first, Koban's refusal mapped as for ``ncPreresv/Add`` (01 lot, 02 prospect: the
doc gives AddValid no codes, so this is a listed guess), an unknown outcome queues the lot
for reconciliation. The lot then holds a préréservation marked ``validated``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.koban import KobanMethod
from service.usecases.flow_common import one_lot_write
from service.usecases.prereservation import Prereservation
from statecharts import transitions as tr
from statecharts.errors import ErrorCode
from statecharts.model import Lot

__all__ = ["ValidatedPrereservation"]


class ValidatedPrereservation(Prereservation):
    """`prereserve_validated` through Koban."""

    @one_lot_write  # as `prereserve`: it converts the prospect's option
    async def prereserve_validated(self, extcode: str, values: Mapping[str, Any]) -> Lot:
        """`values` keyed as `service.koban.add_valid.FIELDS` names them; ``third_guid``,
        ``price_cents`` and ``deposit_cents`` are required."""
        third = str(values["third_guid"])
        price, deposit = int(values["price_cents"]), int(values["deposit_cents"])

        def validate(trial: Lot, lot: Lot, now: int) -> Lot:
            tr.prereserve(trial, third, None, price, deposit, now, self.rules)
            return lot

        await self._check_lot(extcode, validate)
        answer = await self._call(extcode, self.koban.add_valid_prereservation(extcode, values))
        if not answer.success:
            await self._refused_lot(extcode, KobanMethod.PRERESV, answer, ErrorCode.LOT_UNKNOWN)
        return await self._apply_after_koban(
            extcode,
            "PreresvAddValid",
            self.store.prereserve(
                extcode, third, None, price, deposit, self._now(), validated=True
            ),
        )
