"""The one serialization of a lot in Redis: ``"<rev>|<compact json>"``.

The revision prefix lets the commit script compare revisions without decoding JSON. Short
keys and positional option/intent arrays keep a free lot well under 200 bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from statecharts.model import STATUS_OF_CONFIG, Echo, Intent, Lot, Option, Prereservation

# A stored option is a JSON array; its slots, in this order (the one place that says it):
OPT_ID = 0
OPT_RANK = 1
OPT_HOLDER = 2  # the third's guid; None for an opaque placeholder
OPT_PARTNER = 3
OPT_PLACED_AT = 4
OPT_DEADLINE = 5
OPT_EXPIRY = 6  # the effective expiry, a tick; None when unknown
OPT_PROLONGED = 7  # 0 / 1
OPT_KOBAN_SOURCE = 8  # 1: the deadline is Koban's; 0: estimated
OPT_ORIGINAL_DEADLINE = 9
OPT_VIA_API = 10  # 0 / 1
OPT_NOTICED = 11  # 0 / 1; appended later: arrays written before it have 11 slots


def encode_option(o: Option) -> list[Any]:
    return [
        o.id,
        o.rank,
        o.holder,
        o.partner,
        o.placed_at,
        o.deadline,
        o.expiry,
        int(o.prolonged),
        1 if o.source == "koban" else 0,
        o.original_deadline,
        int(o.via_api),
        int(o.noticed),
    ]


def decode_option(a: list[Any]) -> Option:
    # Positional, in the field order of `Option` (a test round-trips every field): keywords
    # cost measurably more, and this is the hottest read.
    return Option(
        a[OPT_ID],
        a[OPT_RANK],
        a[OPT_HOLDER],
        a[OPT_PARTNER],
        a[OPT_PLACED_AT],
        a[OPT_DEADLINE],
        a[OPT_EXPIRY],
        bool(a[OPT_PROLONGED]),
        "koban" if a[OPT_KOBAN_SOURCE] else "estimated",
        a[OPT_ORIGINAL_DEADLINE],
        bool(a[OPT_VIA_API]),
        len(a) > OPT_NOTICED and bool(a[OPT_NOTICED]),
    )


def is_noticed(a: list[Any]) -> bool:
    """Whether a stored option has had its expiring notice."""
    return len(a) > OPT_NOTICED and bool(a[OPT_NOTICED])


def encode_lot(lot: Lot) -> bytes:
    d: dict[str, Any] = {"c": lot.config, "v": lot.version, "q": lot.sequence}
    if lot.status != _default_status(lot.config):
        d["s"] = lot.status
    if lot.options:
        d["o"] = [encode_option(o) for o in lot.options]
    if lot.intents:
        d["i"] = [[i.id, i.rank, i.holder, i.partner, i.created_at] for i in lot.intents]
    if lot.prereservation is not None:
        p = lot.prereservation
        d["r"] = [p.holder, p.partner, p.price_cents, p.deposit_cents, p.at]
        if p.validated:
            d["r"].append(True)
    if lot.echoes:
        d["e"] = [[e.kind, e.third, e.at, e.date] for e in lot.echoes]
    for key, value in (("p", lot.program), ("l", lot.label), ("g", lot.guid), ("k", lot.link)):
        if value is not None:
            d[key] = value
    if lot.secondary:
        d["t"] = 1
    d["m"] = lot.modified_at
    return b"%d|" % lot.rev + orjson.dumps(d)


def decode_lot(extcode: str, raw: bytes) -> Lot:
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    config = d["c"]
    r = d.get("r")
    return Lot(
        extcode=extcode,
        config=config,
        status=d.get("s") or _default_status(config),
        version=d["v"],
        sequence=d["q"],
        rev=int(raw[:bar]),
        options=[decode_option(a) for a in d.get("o", ())],
        intents=[Intent(*a) for a in d.get("i", ())],
        prereservation=Prereservation(*r) if r else None,
        echoes=[Echo(*a) for a in d.get("e", ())],
        program=d.get("p"),
        label=d.get("l"),
        guid=d.get("g"),
        secondary=bool(d.get("t")),
        link=d.get("k"),
        modified_at=d.get("m", 0),
    )


def _default_status(config: str) -> str:
    return STATUS_OF_CONFIG.get(config, "")
