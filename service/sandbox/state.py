"""The Koban sandbox's state and Koban's operations on it (ncOption, ncPreresv, ncDeal,
ncThird, and what Koban's UI does), changed only through `statecharts.transitions`.

Koban's placement limits are decided by the chart, as the service's own are; what this
adds is Koban's answers: the refusal each method gives (`refusals.py`) and the webhook
each change fires (`webhooks.py`). Options expire only at ticks: `advance_to` /
`catch_up` run every tick passed, in order. The choices made where Koban's doc is silent
are in docs/sandbox.md.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Literal
from zoneinfo import ZoneInfo

from statecharts import transitions as tr
from statecharts.decide import decide
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import Lot, Option, Rules
from statecharts.ticks import latest_tick, parse_duration

from . import rendering
from .clock import Clock, ClockBackwards, SandboxClock, real_clock
from .denonciation_book import Denonciations
from .faults import Fault, Faults
from .refusals import ADD_CODES, PROLONG_CODES, UNDO_CODES, SandboxRefusal, refuse_undocumented
from .stock import PrgDateMeaning, Profile, SalesRep, Stock, check_prg_date, check_profile
from .webhooks import Webhook, WebhookKind, WebhookSender, make_webhook

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "ClockBackwards",
    "SandboxRefusal",
    "SandboxState",
    "default_rules",
]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
# Status labels a sandbox operator may set (`set_status`), and the chart target of each.
_STATUS_TARGETS: dict[str, str] = {
    "LIBRE": "free",
    "BLOQUE": "blocked",
    "RESV": "reserved",
    "PRERESV": "prereserved",
    "SOLD": "sold",
    "WON": "sold",
}


def default_rules() -> Rules:
    """Koban's defaults in the sandbox: Europe/Paris, options live two days, 3 per prospect."""
    return Rules(zone=ZoneInfo("Europe/Paris"), option_lifetime=parse_duration("P2D"))


def _lot_unknown() -> SandboxRefusal:
    return refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN)


class SandboxState(Stock):
    """Everything the Koban simulator knows; all methods are synchronous and atomic
    (one event loop), and fire webhooks into `webhooks` (delivered asynchronously)."""

    def __init__(
        self,
        *,
        api_key: str,
        user_key: str,
        rules: Rules | None = None,
        clock: Clock = real_clock,
        webhooks: WebhookSender | None = None,
        seed: int = 0,
        two_options_result: Literal[1, -3] = -3,
        sales_rep: SalesRep | None = None,
        quirks: bool = False,
        profile: Profile = "doc",
        prg_date: PrgDateMeaning = "deadline",
        cgp_status_code: str = "CGP",
    ) -> None:
        if not api_key or not user_key:
            raise ValueError("the sandbox needs an API key and a user key")
        if two_options_result not in (1, -3):
            raise ValueError("two_options_result must be 1 or -3")
        super().__init__(time=SandboxClock(clock), seed=seed)
        self.api_key = api_key
        self.user_key = user_key
        self.rules = rules if rules is not None else default_rules()
        self.webhooks = webhooks if webhooks is not None else WebhookSender()
        self.two_options_result: Literal[1, -3] = two_options_result
        self.sales_rep = sales_rep if sales_rep is not None else SalesRep()
        # Answer with Koban's other spellings: "Success"/"ErrorCode"/"Message", codes as
        # integers, timestamps in milliseconds (exercises a client's tolerant parsing).
        self.quirks = quirks
        # Which of Koban's published shapes to speak (docs/sandbox.md, "Profiles"), and
        # what the option-prolonged webhook's PrgDate carries.
        self.profile: Profile = check_profile(profile)
        self.prg_date: PrgDateMeaning = check_prg_date(prg_date)
        # The account status code that makes a posted third a CGP (the tenant's setting).
        self.cgp_status_code = cgp_status_code
        self.faults = Faults()
        self.denonciations = Denonciations()
        # ncPreresv/AddValid bodies as received, per lot (the dossier's fields).
        self.dossiers: dict[str, dict[str, object]] = {}
        # Koban API calls received with valid keys, per method (faulted ones included).
        self.calls: Counter[str] = Counter()
        self._muted = False

    # ----------------------------------------------------------------- clock and ticks

    @property
    def offset(self) -> int:
        return self.time.offset

    @property
    def ticked_upto(self) -> int:
        """The instant up to which ticks have run."""
        return self.time.ticked_upto

    def next_tick(self) -> int:
        return self.time.next_tick()

    def advance_to(self, ts: int) -> list[int]:
        """Move the clock to `ts` (never backwards) and run every tick passed, in order."""
        self.time.move_to(ts)
        return self.catch_up()

    def catch_up(self) -> list[int]:
        """Run the ticks passed since the last run (the clock may have moved on its own)."""
        ticks, upto = self.time.pass_ticks()
        self._expire_upto(latest_tick(upto))
        return ticks

    def _expire_upto(self, upto: int) -> None:
        """Expire every option due at or before `upto`, one tick at a time across lots."""
        if self._expired_through is not None and upto <= self._expired_through:
            return  # no lot expires at or before `upto` (`_index` keeps this true)
        while True:
            due: list[tuple[int, Lot]] = []
            for lot in self.lots.values():
                tick = lot.next_expiry()
                if tick is not None and tick <= upto:
                    due.append((tick, lot))
            if not due:
                self._expired_through = upto
                return
            tick = min(t for t, _ in due)
            for t, lot in due:
                if t != tick:
                    continue
                events = tr.expire_due(lot, tick, self.rules, actor="sweep")
                # Updated = when the change was recorded (a late catch-up is later than
                # the tick), so an incremental GetUpdated never misses it.
                self._touch(lot, self.now(), events)
                for event in events:
                    if event.type == "option.expired":
                        holder = event.data.get("thirdGuid")
                        self._fire(
                            "option_expired",
                            {**self._deal_fields(lot), **self._third_fields(holder)},
                        )

    # ----------------------------------------------------------------- faults

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, method: str) -> Fault | None:
        """The first fault that applies to this call of `method`, consuming one count."""
        return self.faults.take(method)

    # ----------------------------------------------------------------- webhooks

    def _fire(self, kind: WebhookKind, values: Mapping[str, object]) -> Webhook:
        if self.profile == "generic":
            values = rendering.dotnet_dates(values)
        hook = make_webhook(kind, values)
        if not self._muted:
            self.webhooks.fire(hook)
        return hook

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Changes made inside fire no webhook (set-up such as the demo stock)."""
        previous, self._muted = self._muted, True
        try:
            yield
        finally:
            self._muted = previous

    def _deal_fields(self, lot: Lot) -> dict[str, object]:
        return rendering.deal_fields(lot)

    def _third_fields(self, guid: object) -> dict[str, object]:
        return rendering.third_fields(guid, self.prospects)

    # ----------------------------------------------------------------- ncOption

    def lot_status(self, extcode: str) -> dict[str, object]:
        """GetLotStatus: Result 0 / 1 (MaxRank 1) / two options / -1 / -2, and EndDate."""
        lot = self.lots.get(extcode)
        if lot is None:
            return {"Result": -1, "MaxRank": 0, "EndDate": None}
        first = lot.option_at(1)
        end = first.expiry if first is not None else None
        count = len(lot.options)
        status = self.wire_status(lot)
        if lot.config == "prereserved":
            result = -2
        elif count >= 2:
            result = self.two_options_result
        elif count == 1:
            result = 1
        else:
            # No option (LIBRE; or RESV/BLOQUE/sold/custom, which hold none): 0.
            result = 0
        return {
            "Result": result,
            "MaxRank": count,
            "EndDate": end,
            "Status": status if isinstance(status, str) else status["Code"],
        }

    def _check_placement(self, lot: Lot, holder: str, rank: int | None, via_api: bool) -> None:
        facts = tr.place_facts(
            lot,
            holder,
            rank,
            self.prospect_option_count(holder),
            self.user_option_count() if via_api else 0,
            self.rules,
        )
        try:
            decide(lot.config, "place", facts)
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, ADD_CODES) from None

    def add_option(
        self,
        extcode: str,
        third: str,
        *,
        rank: int | None = None,
        placed_at: int | None = None,
        partner: str | None = None,
        via_api: bool = True,
    ) -> Option:
        """ncOption/Add (via_api) or a placement in Koban's UI (not via_api)."""
        lot = self._lot_or_refuse(
            extcode,
            _lot_unknown(),
        )
        if third not in self.prospects:
            raise refuse_undocumented("third not found", 404, ErrorCode.PROSPECT_UNKNOWN)
        self._check_placement(lot, third, rank, via_api)
        when = self.now() if placed_at is None else placed_at
        events = tr.place_option(
            lot,
            option_id=self.new_guid(),
            holder=third,
            partner=partner,
            placed_at=when,
            rules=self.rules,
            via_api=via_api,
            actor="koban",
            rank=rank,
        )
        self._touch(lot, self.now(), events)
        option = lot.option_of(third)
        assert option is not None
        fields = rendering.option_placed_fields(lot, option, third, self.prospects, self.sales_rep)
        self._fire("option_placed", fields)
        return option

    def prolong_option(self, extcode: str, rank: int, until: int) -> Option:
        """ncOption/Prolong: `until` (DateProlongation) becomes the deadline."""
        not_found = SandboxRefusal(
            "option not found for this lot and rank",
            errorcode="01",
            reason=ErrorCode.OPTION_NOT_FOUND.value,
        )
        lot = self._lot_or_refuse(extcode, not_found)
        try:
            events = tr.prolong_option(lot, rank, until, None, self.now(), self.rules, "koban")
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, PROLONG_CODES) from None
        self._touch(lot, self.now(), events)
        option = lot.option_at(rank)
        assert option is not None
        self._fire(
            "option_prolonged",
            {
                **self._deal_fields(lot),
                **self._third_fields(option.holder),
                "Rank": option.rank,
                "ExpDate": option.expiry,
                "PrgDate": option.deadline if self.prg_date == "deadline" else self.now(),
            },
        )
        return option

    def undo_option(self, extcode: str, rank: int) -> Option:
        """ncOption/Undo: cancel the option at `rank` (rank 2 is promoted if rank 1 goes)."""
        not_found = SandboxRefusal(
            "option not found for this lot and rank",
            errorcode="01",
            reason=ErrorCode.OPTION_NOT_FOUND.value,
        )
        lot = self._lot_or_refuse(extcode, not_found)
        option = lot.option_at(rank)
        cancelled = replace(option) if option is not None else None
        try:
            events = tr.cancel_option(lot, rank, None, self.now(), self.rules, "koban")
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, UNDO_CODES) from None
        assert cancelled is not None
        self._touch(lot, self.now(), events)
        self._fire(
            "option_cancelled",
            {
                **self._deal_fields(lot),
                **self._third_fields(cancelled.holder),
                "Rank": cancelled.rank,
            },
        )
        return cancelled

    # ----------------------------------------------------------------- ncPreresv

    def prereserve(
        self,
        extcode: str,
        third: str,
        *,
        price_cents: int,
        deposit_cents: int,
        partner: str | None = None,
    ) -> None:
        """ncPreresv/Add: 01 lot unknown, 02 prospect unknown; the lot goes PRERESV."""
        lot = self._lot_or_refuse(
            extcode,
            SandboxRefusal("lot not found", errorcode="01", reason=ErrorCode.LOT_UNKNOWN.value),
        )
        if third not in self.prospects:
            raise SandboxRefusal(
                "prospect not found", errorcode="02", reason=ErrorCode.PROSPECT_UNKNOWN.value
            )
        now = self.now()
        try:
            events = tr.prereserve(
                lot, third, partner, price_cents, deposit_cents, now, self.rules, "koban"
            )
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, frozenset()) from None
        self._touch(lot, now, events)
        info = self.info[extcode]
        info.prereservation_id = self.new_guid()
        info.converted_option = None
        for event in events:
            if event.type == "lot.prereserved":
                converted = event.data.get("convertedOptionId")
                info.converted_option = converted if isinstance(converted, str) else None

    def desist(self, extcode: str, third: str) -> None:
        """ncPreresv/Desist: 01 lot unknown, 02 prospect unknown; fires reservation-withdrawn."""
        lot = self._lot_or_refuse(
            extcode,
            SandboxRefusal("lot not found", errorcode="01", reason=ErrorCode.LOT_UNKNOWN.value),
        )
        if third not in self.prospects:
            raise SandboxRefusal(
                "prospect not found", errorcode="02", reason=ErrorCode.PROSPECT_UNKNOWN.value
            )
        self._withdraw(lot, third)

    def _withdraw(self, lot: Lot, third: str | None) -> None:
        now = self.now()
        try:
            events = tr.withdraw(lot, third, now, self.rules, "koban")
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, frozenset()) from None
        self._touch(lot, now, events)
        info = self.info[lot.extcode]
        info.prereservation_id = None
        info.converted_option = None
        self._fire("reservation_withdrawn", self._deal_fields(lot))

    # ----------------------------------------------------------------- ncDeal

    def wire_status(self, lot: Lot) -> str | dict[str, str]:
        """Koban's Status of a lot: a label, or `{Code, Label}` for a custom status."""
        return rendering.wire_status(lot, self.info[lot.extcode])

    def lot_json(self, lot: Lot) -> dict[str, object]:
        """A lot as ncDeal/GetUpdated lists it."""
        programme = self.programmes[lot.program] if lot.program else None
        return rendering.lot_json(lot, self.info[lot.extcode], programme, self.profile)

    def updated_lots(
        self,
        updated: int,
        start: int = 0,
        length: int = DEFAULT_PAGE,
        process_code: str | None = None,
    ) -> tuple[int, list[dict[str, object]]]:
        """Lots changed at or after `updated` (creation order), one page: (total, page)."""
        matching = [
            lot
            for lot in self.lots.values()
            if lot.modified_at >= updated and (process_code is None or lot.program == process_code)
        ]
        page = matching[start : start + length]
        return len(matching), [self.lot_json(lot) for lot in page]

    def deal_processes(self) -> list[dict[str, object]]:
        return [p.as_json() for p in self.programmes.values()]

    # ----------------------------------------------------------------- Koban UI actions

    def validate_reservation(self, extcode: str, third: str | None = None) -> dict[str, str]:
        """Koban validates a reservation file: RESV, fires reservation-validated."""
        lot = self._lot_or_refuse(extcode, _lot_unknown())
        now = self.now()
        try:
            events, _drift = tr.validate_reservation(lot, now, self.rules, "koban")
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, frozenset()) from None
        self._touch(lot, now, events)
        pre = lot.prereservation
        holder = pre.holder if pre is not None else third
        person = self.prospects.get(holder) if holder else None
        programme = self.programmes.get(lot.program) if lot.program else None
        fields = rendering.reservation_validated_fields(
            lot, holder, person, self.info[extcode], programme, self.sales_rep
        )
        hook = self._fire("reservation_validated", fields)
        return hook.fields

    def withdraw_reservation(self, extcode: str, third: str | None = None) -> None:
        """Koban records a désistement (UI): fires reservation-withdrawn."""
        lot = self._lot_or_refuse(extcode, _lot_unknown())
        self._withdraw(lot, third)

    def set_status(self, extcode: str, status: str, label: str | None = None) -> None:
        """Koban's UI moves a lot to LIBRE/BLOQUE/RESV/PRERESV/sold or a custom status.

        Options the new status cannot hold end (no webhook: the doc has none for it).
        """
        lot = self._lot_or_refuse(extcode, _lot_unknown())
        code = status.strip()
        if not code:
            raise SandboxRefusal("status must not be empty", http_status=400)
        if code.upper() == "OPTION":
            raise SandboxRefusal(
                "place options with POST /_sandbox/lots/{extcode}/options", http_status=400
            )
        target = _STATUS_TARGETS.get(code.upper(), "custom")
        now = self.now()
        events = tr.sync_status(lot, target, code, now, self.rules, actor="sync")
        self._touch(lot, now, events)
        self.info[extcode].custom_label = (label or code) if target == "custom" else None

    def lot_view(self, extcode: str) -> dict[str, object]:
        """The sandbox's own view of a lot (for twin tests)."""
        lot = self._lot_or_refuse(extcode, _lot_unknown())
        return rendering.lot_view(lot, self.info[extcode])
