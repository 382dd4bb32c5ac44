"""What the sandbox's Koban holds: programmes, lots (`statecharts.model.Lot` plus what
Koban shows beyond the chart), thirds (prospects and CGPs), and the counts derived from
the lots after every change so that a call's work does not grow with the stock."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from statecharts.model import DomainEvent, Lot

from .clock import SandboxClock
from .refusals import SandboxRefusal

__all__ = [
    "PRG_DATES",
    "PROFILES",
    "THIRD_TYPES",
    "LotInfo",
    "PrgDateMeaning",
    "Profile",
    "Programme",
    "SalesRep",
    "Stock",
    "Third",
    "check_prg_date",
    "check_profile",
]

THIRD_TYPES = ("PROSPECT", "CGP")
Profile = Literal["doc", "generic"]
PrgDateMeaning = Literal["deadline", "moment"]
PROFILES: tuple[Profile, ...] = ("doc", "generic")
PRG_DATES: tuple[PrgDateMeaning, ...] = ("deadline", "moment")
# The lot statuses a programme's steps list (GetAll's `Steps`).
_STEPS: tuple[tuple[str, str], ...] = (
    ("Libre", "LIBRE"),
    ("Option", "OPTION"),
    ("Préréservé", "PRERESV"),
    ("Réservé", "RESV"),
    ("Bloqué", "BLOQUE"),
)


def check_profile(value: str) -> Profile:
    for profile in PROFILES:
        if value == profile:
            return profile
    raise ValueError(f"profile must be one of {', '.join(PROFILES)}")


def check_prg_date(value: str) -> PrgDateMeaning:
    for meaning in PRG_DATES:
        if value == meaning:
            return meaning
    raise ValueError(f"prg_date must be one of {', '.join(PRG_DATES)}")


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
    type_code: str | None = None  # Koban's account `Type{Code}` (PRO, PART…), kept as sent
    status_code: str | None = None  # `Status{Code}` as sent, when it is not `type`

    def as_json(self) -> dict[str, object]:
        """The account as Koban's account structure shows it (`Status{Code}` tells a CGP)."""
        return {
            "Guid": self.guid,
            "Label": self.name,
            "FirstName": self.first_name,
            "Status": {"Code": self.status_code or self.type},
            "Type": {"Code": self.type_code} if self.type_code else None,
            "EMail": self.email,
            "Phone": self.phone,
            "Cell": self.mobile,
            "Extcode": self.extcode,
        }


@dataclass(frozen=True, slots=True)
class Programme:
    guid: str
    code: str
    label: str

    def as_json(self) -> dict[str, object]:
        """As ncDealProcess/GetAll lists it: the published structure has no `Code`; the
        programme's code is its `Extcode`."""
        return {
            "Label": self.label,
            "Extcode": self.code,
            "Regroup": None,
            "Guid": self.guid,
            "IsActive": True,
            "Steps": [{"Label": label, "Extcode": code} for label, code in _STEPS],
        }


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
        type_code: str | None = None,
        unique_extcode: bool = True,
        status_code: str | None = None,
    ) -> Third:
        """Create a third, or (`unique_extcode`: PostOne's ``uniqueproperty=Extcode``)
        update the one with the same non-empty `extcode`."""
        kind = type.upper()
        if kind not in THIRD_TYPES:
            raise SandboxRefusal(f"Type must be one of {', '.join(THIRD_TYPES)}", http_status=400)
        existing = None
        if extcode and unique_extcode:
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
            type_code=type_code,
            status_code=status_code if status_code and status_code.upper() != kind else None,
        )
        self.prospects[third.guid] = third
        return third

    def third_by_key(self, unique_property: str, key: str) -> Third | None:
        """The first third (prospect or CGP, in creation order) whose `Email` (ignoring
        case) or `Extcode` (exact, as PostOne's upsert matches it) is `key`; the property
        name itself is read ignoring case. ValueError for another property."""
        prop = unique_property.strip().lower()
        if prop == "email":
            wanted = key.strip().lower()
            return next((t for t in self.prospects.values() if t.email.lower() == wanted), None)
        if prop == "extcode":
            return next((t for t in self.prospects.values() if t.extcode == key), None)
        raise ValueError("uniqueproperty must be Email or Extcode")

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
