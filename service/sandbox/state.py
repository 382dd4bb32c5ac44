"""The Koban sandbox's in-memory state, changed only through `statecharts.transitions`.

Lots are `statecharts.model.Lot` objects; every change goes through a transition function
(which asks the chart); the only rules checked here are Koban's own placement limits, and
they too are decided by the chart (`transitions.place_facts` + `decide`), exactly as the
service's `reserve_placement` does. What this module adds is Koban's *answers*: which
Koban error code a refusal carries for each API method, and which webhook each change
fires (see `webhooks.py`).

Refusals are `SandboxRefusal`s: `errorcode` set for the codes the Koban doc lists for that
method (answered HTTP 200 `{"success": false, "errorcode": ...}`), otherwise
`errorcode=None` with an HTTP status and the chart's `reason` (cases the doc does not
cover; see the module docstring of `app.py`).

Time: `clock()` (UNIX seconds, injected) plus an offset that only grows (`advance_to`).
Options expire only at ticks: `advance_to(ts)` / `catch_up()` run every tick passed, in
order, through `transitions.expire_due`, and fire one option-expired webhook per option.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from zoneinfo import ZoneInfo

from statecharts import transitions as tr
from statecharts.decide import decide
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import DomainEvent, Lot, Option, Rules
from statecharts.ticks import latest_tick, next_tick, parse_duration, ticks_between

from .webhooks import Webhook, WebhookKind, WebhookSender, make_webhook

Clock = Callable[[], int]

KOBAN_METHODS: tuple[str, ...] = (
    "ncOption/GetLotStatus",
    "ncOption/Add",
    "ncOption/Prolong",
    "ncOption/Undo",
    "ncPreresv/Add",
    "ncPreresv/Desist",
    "ncDeal/GetUpdated",
    "ncDeal/GetUpdatedProcess",
    "ncDealProcess/GetAll",
    "ncThird/PostOne",
)

THIRD_TYPES = ("PROSPECT", "CGP")
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
_WIRE_STATUS: dict[str, str] = {
    "free": "LIBRE",
    "one_option": "OPTION",
    "two_options": "OPTION",
    "prereserved": "PRERESV",
    "reserved": "RESV",
    "blocked": "BLOQUE",
    "sold": "RESV",  # a sold lot is reserved and "acté": Result = WON
}

# Chart refusals that carry a code the Koban doc lists, per API method.
_ADD_CODES = frozenset(
    {
        ErrorCode.PROSPECT_OPTION_LIMIT,  # 01
        ErrorCode.LOT_NOT_AVAILABLE,  # 02
        ErrorCode.USER_OPTION_LIMIT,  # 03
        ErrorCode.LOT_PRERESERVED,  # 04
        ErrorCode.LOT_FULL,  # 05
    }
)
_PROLONG_CODES = frozenset({ErrorCode.OPTION_NOT_FOUND, ErrorCode.ALREADY_PROLONGED})
_UNDO_CODES = frozenset({ErrorCode.OPTION_NOT_FOUND})


def real_clock() -> int:
    return int(time.time())


def default_rules() -> Rules:
    """Koban's defaults in the sandbox: Europe/Paris, options live two days, 3 per prospect."""
    return Rules(zone=ZoneInfo("Europe/Paris"), option_lifetime=parse_duration("P2D"))


class ClockBackwards(ValueError):
    """The sandbox clock only moves forward."""


class SandboxRefusal(Exception):
    """A refusal answered to the caller.

    `errorcode` is the Koban code the doc lists for the method (answered with HTTP 200);
    when the doc has none, `errorcode` is None and `http_status`/`reason` say what it is.
    """

    def __init__(
        self,
        message: str,
        *,
        errorcode: str | None = None,
        http_status: int = 200,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errorcode = errorcode
        self.http_status = http_status
        self.reason = reason

    @classmethod
    def from_violation(cls, exc: RuleViolation, documented: frozenset[ErrorCode]) -> SandboxRefusal:
        if exc.code in documented and exc.koban_code is not None:
            return cls(exc.message, errorcode=exc.koban_code, reason=exc.code.value)
        return cls(exc.message, http_status=exc.http_status, reason=exc.code.value)


def _refuse_undocumented(message: str, status: int, reason: ErrorCode) -> SandboxRefusal:
    return SandboxRefusal(message, http_status=status, reason=reason.value)


@dataclass(slots=True)
class Third:
    """A Koban account: a prospect or a CGP (partner)."""

    guid: str
    type: str = "PROSPECT"
    name: str = ""
    first_name: str = ""
    email: str = ""
    phone: str = ""
    mobile: str = ""
    extcode: str = ""
    process: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "Guid": self.guid,
            "Type": self.type,
            "Name": self.name,
            "FirstName": self.first_name,
            "EMail": self.email,
            "Phone": self.phone,
            "Mobile": self.mobile,
            "Extcode": self.extcode,
            "Process": {"Code": self.process} if self.process else None,
        }


@dataclass(frozen=True, slots=True)
class Programme:
    guid: str
    code: str
    label: str

    def as_json(self) -> dict[str, str]:
        return {"Guid": self.guid, "Code": self.code, "Label": self.label}


@dataclass(frozen=True, slots=True)
class SalesRep:
    """Koban's "commercial" named in the option-placed and reservation webhooks."""

    guid: str = "sandbox-sales-1"
    name: str = "Durand"
    first_name: str = "Claire"
    email: str = "claire.durand@sandbox.invalid"


@dataclass(slots=True)
class LotInfo:
    """What Koban shows of a lot beyond the chart's data."""

    amount: float = 0.0
    tags: list[dict[str, str]] = field(default_factory=list)
    more_fields: list[dict[str, str]] = field(default_factory=list)
    custom_label: str | None = None
    prereservation_id: str | None = None
    converted_option: str | None = None


@dataclass(slots=True)
class Fault:
    """An injected failure for the next `count` calls (None: until cleared) of `methods`
    (None: every Koban method).

    `latency_ms` delays the answer; `timeout` hangs for `hang_seconds` (or until the app
    shuts down) and then answers 504; `status` answers that 5xx; `reset` drops the
    connection with a TCP reset instead of answering; `errorcode` answers a Koban business
    refusal with that code. With `apply`, a hang, 5xx or reset comes *after* the call was
    carried out (its webhook fired): the caller cannot tell the outcome.
    """

    latency_ms: int = 0
    status: int | None = None
    timeout: bool = False
    reset: bool = False
    errorcode: str | None = None
    methods: frozenset[str] | None = None
    count: int | None = None
    apply: bool = False
    hang_seconds: float = 600.0

    @classmethod
    def from_json(cls, body: object) -> Fault:
        if not isinstance(body, dict):
            raise ValueError("a fault is a JSON object")
        known = {
            "latency_ms",
            "status",
            "timeout",
            "reset",
            "errorcode",
            "methods",
            "count",
            "apply",
            "hang_seconds",
        }
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        latency = body.get("latency_ms") or 0
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
            raise ValueError("latency_ms must be an integer >= 0")
        status = body.get("status")
        if status is not None and (
            not isinstance(status, int) or isinstance(status, bool) or not 500 <= status <= 599
        ):
            raise ValueError("status must be a 5xx code or null")
        timeout = body.get("timeout", False)
        reset = body.get("reset", False)
        apply = body.get("apply", False)
        if not all(isinstance(flag, bool) for flag in (timeout, reset, apply)):
            raise ValueError("timeout, reset and apply must be booleans")
        errorcode = body.get("errorcode")
        if errorcode is not None:
            errorcode = normalise_code(errorcode)
        methods = body.get("methods")
        if methods is not None:
            if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
                raise ValueError("methods must be a list of Koban method names or null")
            bad = [m for m in methods if m not in KOBAN_METHODS]
            if bad:
                raise ValueError(f"unknown Koban methods {bad}; known: {list(KOBAN_METHODS)}")
        count = body.get("count")
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise ValueError("count must be an integer >= 1 or null")
        hang = body.get("hang_seconds", 600.0)
        if not isinstance(hang, int | float) or isinstance(hang, bool) or hang <= 0:
            raise ValueError("hang_seconds must be a positive number")
        if not (latency or status or timeout or reset or errorcode):
            raise ValueError("a fault needs latency_ms, status, timeout, reset or errorcode")
        return cls(
            latency_ms=latency,
            status=status,
            timeout=timeout,
            reset=reset,
            errorcode=errorcode,
            methods=frozenset(methods) if methods is not None else None,
            count=count,
            apply=apply,
            hang_seconds=float(hang),
        )

    def as_json(self) -> dict[str, object]:
        return {
            "latency_ms": self.latency_ms,
            "status": self.status,
            "timeout": self.timeout,
            "reset": self.reset,
            "errorcode": self.errorcode,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "count": self.count,
            "apply": self.apply,
            "hang_seconds": self.hang_seconds,
        }


def normalise_code(value: object) -> str:
    """Koban codes as two-digit strings: 5, "5" and "05" are "05"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"not a Koban error code: {value!r}")
    text = str(value).strip()
    if not text.isdigit() or len(text) > 2:
        raise ValueError(f"not a Koban error code: {value!r}")
    return text.zfill(2)


def _euros(cents: int) -> str:
    whole, rest = divmod(cents, 100)
    return f"{whole}.{rest:02d}"


class SandboxState:
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
    ) -> None:
        if not api_key or not user_key:
            raise ValueError("the sandbox needs an API key and a user key")
        if two_options_result not in (1, -3):
            raise ValueError("two_options_result must be 1 or -3")
        self.api_key = api_key
        self.user_key = user_key
        self.rules = rules if rules is not None else default_rules()
        self.webhooks = webhooks if webhooks is not None else WebhookSender()
        self.two_options_result: Literal[1, -3] = two_options_result
        self.sales_rep = sales_rep if sales_rep is not None else SalesRep()
        # Answer with Koban's other spellings: "Success"/"ErrorCode"/"Message", codes as
        # integers, timestamps in milliseconds (exercises a client's tolerant parsing).
        self.quirks = quirks
        self.lots: dict[str, Lot] = {}
        self.info: dict[str, LotInfo] = {}
        self.prospects: dict[str, Third] = {}
        self.programmes: dict[str, Programme] = {}
        self.faults: list[Fault] = []
        # Koban API calls received with valid keys, per method (faulted ones included).
        self.calls: Counter[str] = Counter()
        self._clock = clock
        self._offset = 0
        self._ticked_upto = self.now()
        self._rng = random.Random(seed)
        self._muted = False
        # Derived from the lots by `_index` after every change (`_touch`), so that a call's
        # work does not grow with the stock: each lot's holders and API-placed count (for
        # Koban's limits), their totals, and an instant before which nothing is due.
        self._held: dict[str, tuple[tuple[str | None, ...], int]] = {}
        self._per_prospect: Counter[str | None] = Counter()
        self._via_api = 0
        self._expired_through: int | None = None  # every lot's next expiry is later

    # ----------------------------------------------------------------- ids and set-up

    def new_guid(self) -> str:
        """A Koban-like 24-hex id, deterministic for a given seed and call order."""
        return f"{self._rng.getrandbits(96):024x}"

    def add_programme(self, code: str, label: str, guid: str | None = None) -> Programme:
        programme = Programme(guid or self.new_guid(), code, label)
        self.programmes[code] = programme
        return programme

    def add_lot(
        self,
        extcode: str,
        *,
        programme: str,
        label: str | None = None,
        amount: float = 0.0,
        tags: Iterable[Mapping[str, str]] = (),
        more_fields: Iterable[Mapping[str, str]] = (),
        link: str | None = None,
        guid: str | None = None,
    ) -> Lot:
        """A new LIBRE lot; `link` is the primary lot's extcode for a secondary lot."""
        if extcode in self.lots:
            raise ValueError(f"lot {extcode} exists already")
        if programme not in self.programmes:
            raise ValueError(f"unknown programme {programme}")
        primary = None
        if link is not None:
            primary = self.lots.get(link)
            if primary is None:
                raise ValueError(f"secondary lot {extcode}: unknown primary {link}")
        lot = Lot(
            extcode=extcode,
            program=programme,
            label=label or extcode,
            guid=guid or self.new_guid(),
            secondary=primary is not None,
            link=primary.guid if primary is not None else None,
            modified_at=self.now(),
        )
        self.lots[extcode] = lot
        self.info[extcode] = LotInfo(
            amount=float(amount),
            tags=[dict(t) for t in tags],
            more_fields=[dict(m) for m in more_fields],
        )
        return lot

    def add_third(
        self,
        *,
        type: str = "PROSPECT",
        name: str = "",
        first_name: str = "",
        email: str = "",
        phone: str = "",
        mobile: str = "",
        extcode: str = "",
        process: str | None = None,
        guid: str | None = None,
    ) -> Third:
        """Create a third, or update the one with the same non-empty `extcode` (upsert)."""
        kind = type.upper()
        if kind not in THIRD_TYPES:
            raise SandboxRefusal(f"Type must be one of {', '.join(THIRD_TYPES)}", http_status=400)
        existing = None
        if extcode:
            existing = next((t for t in self.prospects.values() if t.extcode == extcode), None)
        third = Third(
            guid=existing.guid if existing else (guid or self.new_guid()),
            type=kind,
            name=name,
            first_name=first_name,
            email=email,
            phone=phone,
            mobile=mobile,
            extcode=extcode,
            process=process,
        )
        self.prospects[third.guid] = third
        return third

    # ----------------------------------------------------------------- clock and ticks

    def now(self) -> int:
        return int(self._clock()) + self._offset

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def ticked_upto(self) -> int:
        """The instant up to which ticks have run."""
        return self._ticked_upto

    def next_tick(self) -> int:
        return next_tick(self.now())

    def advance_to(self, ts: int) -> list[int]:
        """Move the clock to `ts` (never backwards) and run every tick passed, in order."""
        now = self.now()
        if ts < now:
            raise ClockBackwards(f"the sandbox clock is at {now}; {ts} is in the past")
        self._offset += ts - now
        return self.catch_up()

    def catch_up(self) -> list[int]:
        """Run the ticks passed since the last run (the clock may have moved on its own)."""
        upto = self.now()
        ticks = ticks_between(self._ticked_upto, upto)
        if upto > self._ticked_upto:
            self._ticked_upto = upto
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

    # ----------------------------------------------------------------- helpers

    def _touch(self, lot: Lot, when: int, events: list[DomainEvent]) -> None:
        self._index(lot)
        if not events:
            return
        lot.version += 1
        lot.sequence += len(events)
        lot.rev += 1
        lot.modified_at = max(lot.modified_at, when)

    def _fire(self, kind: WebhookKind, values: Mapping[str, object]) -> Webhook:
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
        return {"Deal_Extcode": lot.extcode, "Deal_Guid": lot.guid}

    def _third_fields(self, guid: object) -> dict[str, object]:
        third = self.prospects.get(guid) if isinstance(guid, str) else None
        return {
            "Third_Guid": guid if isinstance(guid, str) else "",
            "Third_Extcode": third.extcode if third else "",
        }

    def _lot_or_refuse(self, extcode: str, refusal: SandboxRefusal) -> Lot:
        lot = self.lots.get(extcode)
        if lot is None:
            raise refusal
        return lot

    def _index(self, lot: Lot) -> None:
        """Bring the derived counts and `_expired_through` up to date with `lot`."""
        holders = tuple(o.holder for o in lot.options)
        via_api = sum(o.via_api for o in lot.options)
        old_holders, old_via_api = self._held.get(lot.extcode, ((), 0))
        if holders != old_holders or via_api != old_via_api:
            self._per_prospect.subtract(old_holders)
            self._per_prospect.update(holders)
            self._via_api += via_api - old_via_api
            self._held[lot.extcode] = (holders, via_api)
        if self._expired_through is not None:
            expiry = lot.next_expiry()
            if expiry is not None and expiry <= self._expired_through:
                self._expired_through = None  # due again: the next catch-up looks at every lot

    def prospect_option_count(self, guid: str) -> int:
        """Active options of prospect `guid` across lots (Koban's limit, code 01)."""
        return self._per_prospect[guid]

    def user_option_count(self) -> int:
        """Active options placed through the API user (Koban's per-user limit, code 03)."""
        return self._via_api

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
            raise SandboxRefusal.from_violation(exc, _ADD_CODES) from None

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
            _refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN),
        )
        if third not in self.prospects:
            raise _refuse_undocumented("third not found", 404, ErrorCode.PROSPECT_UNKNOWN)
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
        person = self.prospects[third]
        rep = self.sales_rep
        self._fire(
            "option_placed",
            {
                **self._deal_fields(lot),
                **self._third_fields(third),
                "Rank": option.rank,
                "ExpDate": option.expiry,
                "Third_Name": person.name,
                "Third_FirstName": person.first_name,
                "Third_EMail": person.email,
                "AssignedTo_Name": rep.name,
                "AssignedTo_FirstName": rep.first_name,
                "AssignedTo_EMail": rep.email,
            },
        )
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
            raise SandboxRefusal.from_violation(exc, _PROLONG_CODES) from None
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
                "PrgDate": option.deadline,
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
            raise SandboxRefusal.from_violation(exc, _UNDO_CODES) from None
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

    # ----------------------------------------------------------------- ncDeal, ncThird

    def wire_status(self, lot: Lot) -> str | dict[str, str]:
        """Koban's Status of a lot: a label, or `{Code, Label}` for a custom status."""
        if lot.config == "custom":
            label = self.info[lot.extcode].custom_label or lot.status
            return {"Code": lot.status, "Label": label}
        return _WIRE_STATUS[lot.config]

    def lot_json(self, lot: Lot) -> dict[str, object]:
        """A lot as ncDeal/GetUpdated lists it."""
        info = self.info[lot.extcode]
        programme = self.programmes[lot.program] if lot.program else None
        return {
            "Guid": lot.guid,
            "Extcode": lot.extcode,
            "Label": lot.label,
            "Status": self.wire_status(lot),
            "Result": "WON" if lot.config == "sold" else None,
            "Process": (
                {"Code": programme.code, "Label": programme.label, "Guid": programme.guid}
                if programme
                else None
            ),
            "Amountprev": info.amount,
            "Tags": [dict(t) for t in info.tags],
            "MoreFields": [dict(m) for m in info.more_fields],
            "Type": "Secondary" if lot.secondary else None,
            "Link": lot.link,
            "Updated": lot.modified_at,
        }

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

    def deal_processes(self) -> list[dict[str, str]]:
        return [p.as_json() for p in self.programmes.values()]

    # ----------------------------------------------------------------- Koban UI actions

    def validate_reservation(self, extcode: str, third: str | None = None) -> dict[str, str]:
        """Koban validates a reservation file: RESV, fires reservation-validated."""
        lot = self._lot_or_refuse(
            extcode, _refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN)
        )
        now = self.now()
        try:
            events, _drift = tr.validate_reservation(lot, now, self.rules, "koban")
        except RuleViolation as exc:
            raise SandboxRefusal.from_violation(exc, frozenset()) from None
        self._touch(lot, now, events)
        pre = lot.prereservation
        holder = pre.holder if pre is not None else third
        person = self.prospects.get(holder) if holder else None
        info = self.info[extcode]
        programme = self.programmes.get(lot.program) if lot.program else None
        rep = self.sales_rep
        hook = self._fire(
            "reservation_validated",
            {
                "Lot_Code": lot.extcode,
                "_id": info.prereservation_id,
                "DealId": lot.guid,
                "ThirdId": holder,
                "PrixVente": _euros(pre.price_cents) if pre else None,
                "Garantie": _euros(pre.deposit_cents) if pre else None,
                "AssignedToId": rep.guid,
                "OptionId": info.converted_option,
                "PreresaDate": pre.at if pre else None,
                "DealProcessId": programme.guid if programme else None,
                "Res1Nom": person.name if person else None,
                "Res1Prenom": person.first_name if person else None,
                "Res1Phone": person.phone if person else None,
                "Res1Mail": person.email if person else None,
                "Res2": "N",
                "AssignedTo_Name": rep.name,
                "AssignedTo_FirstName": rep.first_name,
                "AssignedTo_EMail": rep.email,
            },
        )
        return hook.fields

    def withdraw_reservation(self, extcode: str, third: str | None = None) -> None:
        """Koban records a désistement (UI): fires reservation-withdrawn."""
        lot = self._lot_or_refuse(
            extcode, _refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN)
        )
        self._withdraw(lot, third)

    def set_status(self, extcode: str, status: str, label: str | None = None) -> None:
        """Koban's UI moves a lot to LIBRE/BLOQUE/RESV/PRERESV/sold or a custom status.

        Options the new status cannot hold end (no webhook: the doc has none for it).
        """
        lot = self._lot_or_refuse(
            extcode, _refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN)
        )
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
        lot = self._lot_or_refuse(
            extcode, _refuse_undocumented("lot not found", 404, ErrorCode.LOT_UNKNOWN)
        )
        pre = lot.prereservation
        return {
            "extcode": lot.extcode,
            "guid": lot.guid,
            "config": lot.config,
            "status": self.wire_status(lot),
            "result": "WON" if lot.config == "sold" else None,
            "updated": lot.modified_at,
            "options": [
                {
                    "rank": o.rank,
                    "thirdGuid": o.holder,
                    "partnerGuid": o.partner,
                    "placedAt": o.placed_at,
                    "deadline": o.deadline,
                    "expDate": o.expiry,
                    "prolonged": o.prolonged,
                    "viaApi": o.via_api,
                }
                for o in sorted(lot.options, key=lambda o: o.rank)
            ],
            "prereservation": (
                {
                    "thirdGuid": pre.holder,
                    "partnerGuid": pre.partner,
                    "price": _euros(pre.price_cents),
                    "deposit": _euros(pre.deposit_cents),
                    "at": pre.at,
                }
                if pre is not None
                else None
            ),
        }

    # ----------------------------------------------------------------- faults

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self, method: str) -> Fault | None:
        """The first fault that applies to this call of `method`, consuming one count."""
        for fault in self.faults:
            if fault.methods is not None and method not in fault.methods:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            return replace(fault)
        return None
