"""`service.storage.codec`: a lot survives its stored form, every field of every part."""

from __future__ import annotations

import dataclasses

from service.storage.codec import decode_lot, encode_lot
from statecharts.model import Echo, Intent, Lot, Option, Prereservation


def test_every_field_of_a_lot_round_trips() -> None:
    first = Option("o1", 1, "h1", "p1", 10, 20, 30, True, "koban", 15, True, True)
    second = Option("o2", 2, None, None, 11, None, None)  # an opaque placeholder, defaults
    lot = Lot(
        "A1",
        config="two_options",
        status="OPTION",
        version=7,
        sequence=9,
        rev=3,
        options=[first, second],
        intents=[Intent("i1", 3, "h3", "p3", 12)],
        prereservation=Prereservation("h1", "p1", 100, 50, 13),
        echoes=[Echo("undo", "h1", 14, 15)],
        program="BEN",
        label="Lot 1",
        guid="g-1",
        secondary=True,
        link="B1",
        modified_at=16,
    )
    back = decode_lot("A1", encode_lot(lot))
    assert dataclasses.asdict(back) == dataclasses.asdict(lot)
    assert back.options == [first, second]


def test_no_two_option_fields_can_be_swapped_unseen() -> None:
    # Distinct numbers, and boolean patterns that differ for every pair of flags
    # (prolonged, via_api, noticed): a positional mix-up in the codec cannot pass.
    for prolonged, via_api, noticed in [
        (True, False, True),
        (False, True, False),
        (True, False, False),
    ]:
        option = Option("o", 2, "h", "p", 10, 20, 30, prolonged, "estimated", 15, via_api, noticed)
        lot = Lot("A1", config="one_option", options=[option])
        assert decode_lot("A1", encode_lot(lot)).options == [option]
