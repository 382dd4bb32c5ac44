"""Byte templates of the sweep's option events (``option.expired``, ``option.promoted``).

The fast expiry path writes an event's CloudEvent and history entry by filling these. They
are not written by hand: they are `service.storage.events`' own output for sentinel values,
each sentinel replaced by a ``%`` slot, and they are checked against it on real values
before use. If the builders ever produce something the templates cannot express (a new
field, another order), there are no templates and every lot takes the generic path:
slower, never different.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import orjson

from service.storage.codec import (
    OPT_DEADLINE,
    OPT_EXPIRY,
    OPT_HOLDER,
    OPT_ID,
    OPT_KOBAN_SOURCE,
    OPT_PARTNER,
    OPT_PLACED_AT,
    OPT_PROLONGED,
    OPT_RANK,
    decode_option,
)
from service.storage.events import (
    DEFAULT_PUBLIC_BASE_URL,
    cloud_event,
    event_id,
    history_entry,
    iso,
)
from statecharts import lot_data
from statecharts.model import DomainEvent, Option

EXPIRED = "option.expired"
PROMOTED = "option.promoted"

# Sentinels: control characters no real value holds (JSON writes them as \u0001).
_CODE = "\x01CODE\x01"
_SEQ, _VER, _TIME = 4321, 98765, 4102444799
_OPTION_KEYS = (
    "optionId",
    "rank",
    "thirdGuid",
    "partnerGuid",
    "placedAt",
    "deadline",
    "effectiveExpiry",
    "deadlineSource",
    "prolonged",
    "actor",
)
_SENTINELS = tuple(f"\x01{k}\x01" for k in _OPTION_KEYS[:-1])
dumps = orjson.dumps


@dataclass(frozen=True, slots=True)
class Templates:
    """Per event type, ``%`` templates of its CloudEvent and of its history entry.

    CloudEvent slots: the id's extcode part (JSON without the closing quote), sequence,
    subject (JSON), time (JSON), extcode (JSON), sequence, version, then `option_pieces`'
    first tuple. History slots: sequence, version, time, then its second tuple.
    """

    cloud: dict[str, bytes]
    history: dict[str, bytes]


def templates(tenant: str, base_url: str = DEFAULT_PUBLIC_BASE_URL) -> Templates | None:
    """The tenant's templates (derived once per schema base URL), or None when they cannot
    express the events."""
    key = (tenant, base_url)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _derive(tenant, base_url)
    return _TEMPLATES[key]


_TEMPLATES: dict[tuple[str, str], Templates | None] = {}


def _fill(sample: bytes, needles: list[tuple[bytes, bytes]]) -> bytes | None:
    """`sample` with each needle (found in this order) replaced by its slot, % escaped."""
    out: list[bytes] = []
    pos = 0
    for needle, slot in needles:
        at = sample.find(needle, pos)
        if at < 0:
            return None
        out += (sample[pos:at].replace(b"%", b"%%"), slot)
        pos = at + len(needle)
    out.append(sample[pos:].replace(b"%", b"%%"))
    if b"\\u0001" in b"".join(out[0::2]):
        return None  # a sentinel left over: the structure is not the one expected
    return b"".join(out)


def _sample_event(type_: str) -> DomainEvent:
    v = cast(Any, _SENTINELS)
    o = Option(
        id=v[0],
        rank=v[1],
        holder=v[2],
        partner=v[3],
        placed_at=v[4],
        deadline=v[5],
        expiry=v[6],
        source=v[7],
        prolonged=v[8],
    )
    return DomainEvent(type_, _TIME, lot_data.option_data(o, "sweep"))


def _derive(tenant: str, base_url: str) -> Templates | None:
    cloud: dict[str, bytes] = {}
    history: dict[str, bytes] = {}
    slots = [(dumps(s), b"%s") for s in _SENTINELS]
    for type_ in (EXPIRED, PROMOTED):
        sample = _sample_event(type_)
        expected = (*zip(_OPTION_KEYS, _SENTINELS, strict=False), ("actor", "sweep"))
        if tuple(sample.data.items()) != expected:
            return None  # option_data is not the field-for-field copy the slots stand for
        code = dumps(_CODE)
        if dumps(event_id(_CODE, _SEQ)) != code[:-1] + b'-%012d"' % _SEQ:
            return None
        c = _fill(
            cloud_event(tenant, _CODE, sample, _SEQ, _VER, base_url),
            [
                (dumps(event_id(_CODE, _SEQ)), b'%s-%012d"'),
                (code, b"%s"),
                (dumps(iso(_TIME)), b"%s"),
                (code, b"%s"),
                (dumps(f"{_SEQ:012d}"), b'"%012d"'),
                (b"%d" % _VER, b"%d"),
                *slots,
            ],
        )
        h = _fill(
            history_entry(sample, _SEQ, _VER),
            [(b"%d" % _SEQ, b"%d"), (b"%d" % _VER, b"%d"), (b"%d" % _TIME, b"%d"), *slots],
        )
        if c is None or h is None:
            return None
        cloud[type_], history[type_] = c, h
    derived = Templates(cloud, history)
    if not _self_check(tenant, base_url, derived):
        return None
    return derived


def _self_check(tenant: str, base_url: str, t: Templates) -> bool:
    """The templates against `service.storage.events` on real values (the tests do it at
    random)."""
    samples = [
        ['o-"1"\\', 2, "p\u00e9\n%s", None, 1_795_000_000, None, 1_795_003_200, 1, 1, None, 0],
        ["o2", 1, None, "cgp", 1_700_000_001, 1_700_000_002, 1_700_001_800, 0, 0, 5, 1],
    ]
    for a in samples:
        for type_ in (EXPIRED, PROMOTED):
            e = DomainEvent(type_, 1_795_003_200, lot_data.option_data(decode_option(a), "sweep"))
            pieces = option_pieces(a)
            code = dumps('L"%1')
            c = t.cloud[type_] % (code[:-1], 7, code, time_json(e.time), code, 7, 3, *pieces[0])
            h = t.history[type_] % (7, 3, e.time, *pieces[1])
            if c != cloud_event(tenant, 'L"%1', e, 7, 3, base_url) or h != history_entry(e, 7, 3):
                return False
    return True


TIME_JSON: dict[int, bytes] = {}  # remembered: a sweep writes the same few instants


def time_json(v: object) -> bytes:
    """An instant of an event on the wire, as `service.storage.events` writes it (ISO when
    int)."""
    if isinstance(v, int):
        j = TIME_JSON.get(v)
        if j is None:
            if len(TIME_JSON) >= 1 << 16:
                TIME_JSON.clear()
            j = TIME_JSON[v] = dumps(iso(v))
        return j
    return dumps(v)


SOURCE_JSON = (b'"estimated"', b'"koban"')  # by the stored option's OPT_KOBAN_SOURCE
PROLONGED_JSON = (b"false", b"true")


def option_pieces(a: list[Any]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """A stored option's JSON pieces for the CloudEvent's and the history's data slots."""
    oid, rank = dumps(a[OPT_ID]), dumps(a[OPT_RANK])
    third, partner = dumps(a[OPT_HOLDER]), dumps(a[OPT_PARTNER])
    source = SOURCE_JSON[1 if a[OPT_KOBAN_SOURCE] else 0]
    prolonged = PROLONGED_JSON[1 if a[OPT_PROLONGED] else 0]
    placed, deadline, expiry = a[OPT_PLACED_AT], a[OPT_DEADLINE], a[OPT_EXPIRY]
    wire_times = time_json(placed), time_json(deadline), time_json(expiry)
    return (
        (oid, rank, third, partner, *wire_times, source, prolonged),
        (oid, rank, third, partner, dumps(placed), dumps(deadline), dumps(expiry), source,
         prolonged),
    )  # fmt: skip
