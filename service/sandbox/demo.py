"""Deterministic demo stock for the Koban sandbox (same seed, same stock).

Three programmes (HAR, BEL, QUA), each with 3 buildings x 5 floors x 6 flats (extcodes
like `HAR-A101`: building A, floor 1, flat 01) and 10 secondary lots (parkings `HAR-P01`..,
cellars `HAR-C01`..; `Type: "Secondary"`, `Link` = the primary's Guid): 300 lots, 10 %
secondary. Thirds with fixed guids: prospects `demo-prospect-1`..`demo-prospect-8`, CGP
partners `demo-cgp-1` and `demo-cgp-2`.

Pre-set lots (table below): some BLOQUE, PRERESV, RESV, sold (`Result: WON`), one custom
status, and a few lots already in OPTION held by demo prospects (placed in Koban's UI
a few hours before start-up), so the service's first import meets options it has never
seen. `demo-prospect-1` holds nothing and `HAR-A101` is LIBRE: the `run` banner's example.
Everything goes through the sandbox's own methods (hence the chart); no webhook is fired.
"""

from __future__ import annotations

import random

from .state import SandboxState

PROGRAMMES: tuple[tuple[str, str], ...] = (
    ("HAR", "Les Jardins d'Harmonie"),
    ("BEL", "Le Belvédère"),
    ("QUA", "Quai des Arts"),
)
BUILDINGS = ("A", "B", "C")
FLOORS = range(1, 6)
FLATS = range(1, 7)
PARKINGS = 6
CELLARS = 4

PROSPECTS: tuple[tuple[str, str, str], ...] = (
    ("demo-prospect-1", "Martin", "Julie"),
    ("demo-prospect-2", "Bernard", "Louis"),
    ("demo-prospect-3", "Petit", "Emma"),
    ("demo-prospect-4", "Robert", "Hugo"),
    ("demo-prospect-5", "Richard", "Chloé"),
    ("demo-prospect-6", "Moreau", "Nathan"),
    ("demo-prospect-7", "Laurent", "Léa"),
    ("demo-prospect-8", "Garcia", "Lucas"),
)
CGPS: tuple[tuple[str, str, str], ...] = (
    ("demo-cgp-1", "Patrimoine Conseil", "Agnès"),
    ("demo-cgp-2", "Horizon Gestion", "Marc"),
)

# (extcode, status) set through Koban's UI at start-up.
STATUSES: tuple[tuple[str, str], ...] = (
    ("HAR-A102", "BLOQUE"),
    ("HAR-C301", "sold"),
    ("BEL-A101", "BLOQUE"),
    ("BEL-C501", "sold"),
    ("QUA-B101", "BLOQUE"),
    ("QUA-C502", "sold"),
)
CUSTOM_STATUS = ("QUA-B402", "RESA_PROMOTEUR", "Réservé promoteur")
# (extcode, prospect): pre-reserved; RESV ones are then validated by Koban.
PRERESERVED: tuple[tuple[str, str], ...] = (
    ("BEL-B102", "demo-prospect-6"),
    ("QUA-A305", "demo-prospect-7"),
)
RESERVED: tuple[tuple[str, str], ...] = (
    ("HAR-B203", "demo-prospect-5"),
    ("QUA-A201", "demo-prospect-8"),
)
# (extcode, [(prospect, partner, hours before start-up)]) placed in Koban's UI.
OPTIONS: tuple[tuple[str, tuple[tuple[str, str | None, int], ...]], ...] = (
    ("HAR-A201", (("demo-prospect-2", None, 5),)),
    ("HAR-A202", (("demo-prospect-3", None, 20), ("demo-prospect-4", "demo-cgp-1", 3))),
    ("BEL-A301", (("demo-prospect-2", "demo-cgp-1", 30),)),
    ("BEL-A302", (("demo-prospect-7", None, 12), ("demo-prospect-8", "demo-cgp-2", 2))),
    ("QUA-C101", (("demo-prospect-3", "demo-cgp-2", 40),)),
    ("HAR-P01", (("demo-prospect-4", None, 1),)),
)

_TYPOLOGY = {1: "T1", 2: "T2", 3: "T3", 4: "T4", 5: "T5"}


def populate(state: SandboxState, seed: int = 2024) -> None:
    """Fill an empty sandbox with the demo stock."""
    if state.lots or state.programmes:
        raise ValueError("the demo stock goes into an empty sandbox")
    rng = random.Random(seed)
    for code, label in PROGRAMMES:
        state.add_programme(code, label)
    for guid, name, first in PROSPECTS:
        slug = f"{first}.{name}".lower().replace("é", "e").replace("è", "e")
        state.add_third(
            guid=guid,
            type="PROSPECT",
            name=name,
            first_name=first,
            email=f"{slug}@example.com",
            mobile=f"06{rng.randrange(10**8):08d}",
            extcode=guid,
        )
    for guid, name, first in CGPS:
        state.add_third(
            guid=guid,
            type="CGP",
            name=name,
            first_name=first,
            email=f"contact@{name.split()[0].lower()}.example.com",
            extcode=guid,
        )
    for code, label in PROGRAMMES:
        primaries: list[str] = []
        for building in BUILDINGS:
            for floor in FLOORS:
                for flat in FLATS:
                    extcode = f"{code}-{building}{floor}{flat:02d}"
                    rooms = rng.randint(1, 5)
                    surface = 18 + rooms * 17 + rng.randint(0, 12)
                    state.add_lot(
                        extcode,
                        programme=code,
                        label=f"{label} - Bât. {building} - Lot {floor}{flat:02d}",
                        amount=float(surface * rng.randint(3800, 5200)),
                        tags=(
                            {"TagCategory": "NBPIECES", "Label": str(rooms)},
                            {"TagCategory": "TPLOG", "Label": _TYPOLOGY[rooms]},
                            {"TagCategory": "ETAGE", "Label": str(floor)},
                        ),
                        more_fields=({"FieldId": "surface", "Value": str(surface)},),
                    )
                    primaries.append(extcode)
        for prefix, count, kind, price in (
            ("P", PARKINGS, "Parking", 15000),
            ("C", CELLARS, "Cave", 6000),
        ):
            for n in range(1, count + 1):
                state.add_lot(
                    f"{code}-{prefix}{n:02d}",
                    programme=code,
                    label=f"{label} - {kind} {n:02d}",
                    amount=float(price + rng.randint(0, 10) * 500),
                    tags=({"TagCategory": "TPLOG", "Label": kind},),
                    link=rng.choice(primaries),
                )
    with state.muted():
        _preset(state)


def _preset(state: SandboxState) -> None:
    now = state.now()
    for extcode, status in STATUSES:
        state.set_status(extcode, status)
    extcode, status, label = CUSTOM_STATUS
    state.set_status(extcode, status, label)
    for extcode, holders in OPTIONS:
        for prospect, partner, hours in holders:
            state.add_option(
                extcode, prospect, placed_at=now - hours * 3600, partner=partner, via_api=False
            )
    for extcode, prospect in (*PRERESERVED, *RESERVED):
        amount = int(state.info[extcode].amount * 100)
        state.prereserve(
            extcode, prospect, price_cents=amount, deposit_cents=amount // 20, partner=None
        )
    for extcode, _ in RESERVED:
        state.validate_reservation(extcode)
