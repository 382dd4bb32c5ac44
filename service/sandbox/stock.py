"""What the sandbox's Koban holds: programmes, lots (`statecharts.model.Lot` plus what
Koban shows beyond the chart), thirds (prospects and CGPs), and the counts derived from
the lots after every change so that a call's work does not grow with the stock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from statecharts.model import DomainEvent, Lot

from .clock import SandboxClock
from .refusals import SandboxRefusal

__all__ = ["THIRD_TYPES", "LotInfo", "Programme", "SalesRep", "Stock", "Third"]

THIRD_TYPES = ("PROSPECT", "CGP")


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


class Stock:
    """Koban's records and their derived counts; lots are stamped with `time`."""

    def __init__(self, *, time: SandboxClock, seed: int = 0) -> None:
        self.time = time
        self.lots: dict[str, Lot] = {}
        self.info: dict[str, LotInfo] = {}
        self.prospects: dict[str, Third] = {}
        self.programmes: dict[str, Programme] = {}
        self._rng = random.Random(seed)
        # Derived from the lots by `_index` after every change (`_touch`): each lot's
        # holders and API-placed count (for Koban's limits), their totals, and an instant
        # before which nothing is due.
        self._held: dict[str, tuple[tuple[str | None, ...], int]] = {}
        self._per_prospect: Counter[str | None] = Counter()
        self._via_api = 0
        self._expired_through: int | None = None  # every lot's next expiry is later

    def now(self) -> int:
        return self.time.now()

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

    # ----------------------------------------------------------------- derived counts

    def _touch(self, lot: Lot, when: int, events: list[DomainEvent]) -> None:
        self._index(lot)
        if not events:
            return
        lot.version += 1
        lot.sequence += len(events)
        lot.rev += 1
        lot.modified_at = max(lot.modified_at, when)

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
