"""The store's business operations, one transition each: import a lot, the placement steps
(reserve, confirm, release), cancel, prolong, pre-reserve, validate, withdraw. Each hands
the chart's transition to `LotStore.mutate`, which reads, commits and retries."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from service.storage.keys import API_USER_FIELD, prospect_field
from service.storage.lot_view import ChangeFn, Counts, new_id
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Intent, Lot, Option, Rules

T = TypeVar("T")


class LotWrites:
    """The operations `LotStore` offers on top of its one write path, `mutate`."""

    if TYPE_CHECKING:
        rules: Rules

        async def mutate(
            self,
            extcode: str,
            change: ChangeFn[T],
            *,
            now: int,
            holder: str | None = None,
            limits: Mapping[str, int] | None = None,
            create: Callable[[], Lot] | None = None,
            written: list[bytes] | None = None,
        ) -> T: ...

    def _place_limits(self, holder: str) -> dict[str, int]:
        limits = {prospect_field(holder): self.rules.max_options_per_prospect}
        if self.rules.max_options_per_user is not None:
            limits[API_USER_FIELD] = self.rules.max_options_per_user
        return limits

    async def import_lot(
        self,
        extcode: str,
        now: int,
        *,
        program: str | None = None,
        label: str | None = None,
        guid: str | None = None,
        secondary: bool = False,
        link: str | None = None,
        actor: str = "sync",
    ) -> bool:
        """Create a lot (LIBRE) with its `lot.imported` event; False when it already exists."""

        def create() -> Lot:
            return Lot(
                extcode, program=program, label=label, guid=guid, secondary=secondary, link=link
            )

        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], bool]:
            if lot.version:
                return [], False
            data: dict[str, object] = {
                "program": program,
                "label": label,
                "status": lot.status,
                "actor": actor,
            }
            if secondary:
                data["link"] = link
            return [DomainEvent("lot.imported", now, data)], True

        return await self.mutate(extcode, change, now=now, create=create)

    async def reserve_placement(
        self,
        extcode: str,
        holder: str,
        partner: str | None,
        now: int,
        rank: int | None = None,
        intent_id: str | None = None,
        written: list[bytes] | None = None,
    ) -> Intent:
        """Placement step 1: the rules against state + intents; holds the rank and the
        allowance.
        `written`: as `mutate`'s (the lot's value holding the intent)."""
        iid = intent_id or new_id()

        def change(lot: Lot, counts: Counts) -> tuple[list[DomainEvent], Intent]:
            intent = tr.reserve_placement(
                lot, iid, holder, partner, rank, now, self.rules, counts.prospect, counts.user
            )
            return [], intent

        return await self.mutate(
            extcode,
            change,
            now=now,
            holder=holder,
            limits=self._place_limits(holder),
            written=written,
        )

    async def confirm_placement(
        self,
        extcode: str,
        intent_id: str,
        now: int,
        placed_at: int | None = None,
        koban_deadline: int | None = None,
        option_id: str | None = None,
    ) -> Option:
        """Placement step 3, Koban placed it: the intent becomes the option."""
        oid = option_id or new_id()

        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Option]:
            events = tr.confirm_placement(
                lot,
                intent_id,
                oid,
                placed_at if placed_at is not None else now,
                self.rules,
                koban_deadline,
            )
            option = next(o for o in lot.options if o.id == oid)
            return events, option

        return await self.mutate(extcode, change, now=now)

    async def release_intent(self, extcode: str, intent_id: str, now: int) -> bool:
        """Placement step 3, Koban refused: the reservation is dropped."""

        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], bool]:
            known = tr.find_intent(lot, intent_id) is not None
            return tr.release_intent(lot, intent_id, now, self.rules), known

        return await self.mutate(extcode, change, now=now)

    async def place_local(
        self, extcode: str, holder: str, partner: str | None, now: int, rank: int | None = None
    ) -> Option:
        """Reserve and confirm at once: the service's own view of a placement Koban accepted."""
        intent = await self.reserve_placement(extcode, holder, partner, now, rank)
        return await self.confirm_placement(extcode, intent.id, now)

    async def cancel(
        self, extcode: str, rank: int, now: int, holder: str | None = None, actor: str = "api"
    ) -> Option:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Option]:
            option = lot.option_at(rank)
            events = tr.cancel_option(lot, rank, holder, now, self.rules, actor)  # type: ignore[arg-type]
            assert option is not None
            return events, option

        return await self.mutate(extcode, change, now=now)

    async def prolong(
        self,
        extcode: str,
        rank: int,
        until: int,
        now: int,
        holder: str | None = None,
        actor: str = "api",
    ) -> Option:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Option]:
            events = tr.prolong_option(lot, rank, until, holder, now, self.rules, actor)  # type: ignore[arg-type]
            option = lot.option_at(rank)
            assert option is not None
            return events, option

        return await self.mutate(extcode, change, now=now)

    async def prereserve(
        self,
        extcode: str,
        holder: str,
        partner: str | None,
        price_cents: int,
        deposit_cents: int,
        now: int,
        *,
        validated: bool = False,
    ) -> Lot:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Lot]:
            return tr.prereserve(
                lot,
                holder,
                partner,
                price_cents,
                deposit_cents,
                now,
                self.rules,
                validated=validated,
            ), lot

        return await self.mutate(extcode, change, now=now)

    async def validate_reservation(self, extcode: str, now: int) -> bool:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], bool]:
            return tr.validate_reservation(lot, now, self.rules)

        return await self.mutate(extcode, change, now=now)

    async def withdraw(self, extcode: str, holder: str | None, now: int) -> Lot:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Lot]:
            return tr.withdraw(lot, holder, now, self.rules), lot

        return await self.mutate(extcode, change, now=now)

    async def sync_status(
        self, extcode: str, target: str, label: str, now: int, rank1_end: int | None = None
    ) -> Lot:
        def change(lot: Lot, _: Counts) -> tuple[list[DomainEvent], Lot]:
            if lot.config == target and lot.status == label:
                return [], lot
            return tr.sync_status(lot, target, label, now, self.rules, rank1_end=rank1_end), lot

        return await self.mutate(extcode, change, now=now)
