"""The one serialization of a lot in Redis: ``"<rev>|<compact json>"``.

The revision prefix lets the commit script compare revisions without decoding JSON. Short
keys and positional option/intent arrays keep a free lot well under 200 bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from statecharts.model import STATUS_OF_CONFIG, Echo, Intent, Lot, Option, Prereservation


def _opt(o: Option) -> list[Any]:
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


def _unopt(a: list[Any]) -> Option:
    # Positional, in the field order of `Option` (a test round-trips every field): keywords
    # cost ≈ 1 µs more an option, on the hottest read.
    return Option(
        a[0],  # id
        a[1],  # rank
        a[2],  # holder
        a[3],  # partner
        a[4],  # placed_at
        a[5],  # deadline
        a[6],  # expiry
        bool(a[7]),  # prolonged
        "koban" if a[8] else "estimated",  # source
        a[9],  # original_deadline
        bool(a[10]),  # via_api
        len(a) > 11 and bool(a[11]),  # noticed (appended later: older arrays have 11)
    )


def encode_lot(lot: Lot) -> bytes:
    d: dict[str, Any] = {"c": lot.config, "v": lot.version, "q": lot.sequence}
    if lot.status != _default_status(lot.config):
        d["s"] = lot.status
    if lot.options:
        d["o"] = [_opt(o) for o in lot.options]
    if lot.intents:
        d["i"] = [[i.id, i.rank, i.holder, i.partner, i.created_at] for i in lot.intents]
    if lot.prereservation is not None:
        p = lot.prereservation
        d["r"] = [p.holder, p.partner, p.price_cents, p.deposit_cents, p.at]
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
        options=[_unopt(a) for a in d.get("o", ())],
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
