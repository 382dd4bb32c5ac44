"""Placing an option through Koban: reserve → call → confirm, never a lock across the
network (docs/flows.md).

The reservation is an intent holding the next rank; ``GetLotStatus`` must show that rank
free on Koban's side before ``Add``; Koban's answer turns the intent into the option or
releases it (with drift when Koban's refusal contradicts the lot). No answer at all leaves
the intent pending for `service.usecases.intents`.
"""

from __future__ import annotations

import asyncio
import copy

from service.koban import (
    KobanAnswer,
    KobanError,
    KobanMethod,
    KobanOutcomeUnknown,
    KobanUnavailable,
    LotStatus,
    is_unknown_prospect,
    koban_refusal,
)
from service.storage.store import Counts, new_id
from service.usecases.flow_common import FlowBase, KobanRefusal, Pending, Placed
from service.usecases.sync import in_drift_tolerance, mark_needs_sync
from statecharts import transitions as tr
from statecharts.drift import add_refusal_contradicts, drift_event, rank_verdict
from statecharts.errors import KOBAN_CODE, ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Option

__all__ = ["Placement"]


class Placement(FlowBase):
    """`place`: an option through Koban."""

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
            if sent and is_unknown_prospect(exc):
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
            verdict = rank_verdict(status.result, status.max_rank, intent.rank, len(lot.options))
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
            drift = add_refusal_contradicts(answer.error_code, lot)
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
