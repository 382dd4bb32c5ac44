"""The lot's data: what the chart's configuration does not hold.

Pure data, standard library only. Times are int UNIX seconds (UTC) everywhere inside the
service; ISO strings appear only at the edges (HTTP, events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from statecharts.ticks import IsoDuration

DeadlineSource = Literal["koban", "estimated"]
Rank2Clock = Literal["own", "restart"]
Actor = Literal["api", "koban", "sweep", "sync", "reconcile"]

# Koban's Status for each chart configuration (custom statuses keep their own label).
STATUS_OF_CONFIG: dict[str, str] = {
    "free": "LIBRE",
    "one_option": "OPTION",
    "two_options": "OPTION",
    "prereserved": "PRERESV",
    "reserved": "RESV",
    "blocked": "BLOQUE",
    "sold": "SOLD",
}


@dataclass(slots=True)
class Option:
    """One active option (a hold of rank 1 or 2) on a lot."""

    id: str
    rank: int
    holder: str | None  # thirdGuid; None for an opaque placeholder
    partner: str | None
    placed_at: int
    deadline: int | None  # None only for an opaque option whose date Koban did not give
    expiry: int | None  # effective expiry: ceil_tick(deadline)
    prolonged: bool = False
    source: DeadlineSource = "estimated"
    original_deadline: int | None = None  # before prolongation, for max_prolongation
    via_api: bool = False  # placed through the tenant's Koban API user (counts toward its limit)
    noticed: bool = False  # its `option.expiring` notice was sent (once per option)

    @property
    def opaque(self) -> bool:
        return self.holder is None


@dataclass(slots=True)
class Intent:
    """A placement reserved before calling Koban: holds a rank and counts toward limits."""

    id: str
    rank: int
    holder: str
    partner: str | None
    created_at: int


EchoKind = Literal["option_cancelled", "option_prolonged", "reservation_withdrawn"]


@dataclass(slots=True)
class Echo:
    """A webhook Koban still owes for a change the service made through Koban's API and
    has already applied from Koban's answer (service.usecases.flows): when it comes, it is that
    change's echo and a replay, however the lot has moved on since (the webhooks use case)."""

    kind: EchoKind
    third: str | None  # the prospect the webhook names (None: reservation_withdrawn)
    at: int  # real time (UNIX s) the change was applied; awaited for a bounded time
    date: int | None = None  # option_prolonged: the DateProlongation sent (its PrgDate)


@dataclass(slots=True)
class Prereservation:
    holder: str
    partner: str | None
    price_cents: int
    deposit_cents: int
    at: int
    validated: bool = False  # placed with ncPreresv/AddValid (a complete dossier)


@dataclass(slots=True)
class Lot:
    extcode: str
    config: str = "free"  # the chart's leaf configuration
    status: str = "LIBRE"  # Koban's Status label (custom ones verbatim)
    version: int = 0  # business version: bumped once per transition that emits events
    sequence: int = 0  # the lot's event counter
    rev: int = 0  # write counter for optimistic concurrency (intent-only writes bump it too)
    options: list[Option] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    prereservation: Prereservation | None = None
    echoes: list[Echo] = field(default_factory=list)  # webhooks owed for our own changes
    program: str | None = None
    label: str | None = None
    guid: str | None = None
    secondary: bool = False
    link: str | None = None
    modified_at: int = 0

    @property
    def occupied(self) -> int:
        """Ranks taken: its options and its pending placements (the next one gets this + 1)."""
        return len(self.options) + len(self.intents)

    def option_at(self, rank: int) -> Option | None:
        for o in self.options:
            if o.rank == rank:
                return o
        return None

    def option_of(self, holder: str) -> Option | None:
        for o in self.options:
            if o.holder == holder:
                return o
        return None

    def holders(self) -> set[str]:
        """Prospects counted on this lot: option holders and pending intents."""
        out = {o.holder for o in self.options if o.holder is not None}
        out.update(i.holder for i in self.intents)
        return out

    def next_expiry(self) -> int | None:
        ticks = [o.expiry for o in self.options if o.expiry is not None]
        return min(ticks) if ticks else None


@dataclass(frozen=True, slots=True)
class Rules:
    """A tenant's option rules (from its configuration)."""

    zone: ZoneInfo
    option_lifetime: IsoDuration
    max_options_per_prospect: int = 3
    max_options_per_user: int | None = None
    rank2_clock: Rank2Clock = "own"
    max_prolongation: IsoDuration | None = None
    expiring_notice: int = 7200  # seconds before the expiry tick of `option.expiring`; 0: none


@dataclass(slots=True)
class DomainEvent:
    """A change to publish; the store gives it an id, sequence and lot version."""

    type: str  # without the "koban." prefix, e.g. "option.expired"
    time: int  # business time (the tick for an expiry)
    data: dict[str, object]
