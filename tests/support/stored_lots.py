"""Hypothesis strategies for lots as the store holds them: random options around one tick
(`TICK`), lots of every shape the sweep meets, and their stored bytes, the codec's output
possibly with one field more or fewer per option array (an older or newer codec)."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

from service.storage.codec import encode_lot
from statecharts.model import Intent, Lot, Option, Prereservation

TICK = 1_795_000_000 - 1_795_000_000 % 1800
offsets = st.sampled_from([-3600, -1800, -1, 0, 1, 1800, 3600])
names = st.sampled_from(["p1", "p2", 'p"3', "p\\4", "p\u00e9", "p%d", "p\n"])


@st.composite
def options(draw: st.DrawFn, n: int) -> list[Option]:
    out = []
    for rank in range(1, n + 1):
        opaque = draw(st.booleans()) and draw(st.booleans())
        deadline = None if opaque and rank == 2 else TICK + draw(offsets) - 60
        out.append(
            Option(
                id=draw(st.sampled_from([f"o{rank}", f"o{rank}", f'o"%s{rank}'])),
                rank=rank,
                holder=None if opaque else draw(names),
                partner=draw(st.sampled_from([None, "cgp", "c\u00e9"])),
                placed_at=TICK - draw(st.sampled_from([86400, 86399, 7])),
                deadline=deadline,
                expiry=None if deadline is None else deadline - deadline % 1800 + 1800,
                prolonged=draw(st.booleans()),
                source=draw(st.sampled_from(["koban", "estimated"])),
                original_deadline=draw(st.sampled_from([deadline, None, TICK - 5])),
                via_api=draw(st.booleans()),
            )
        )
    return out


@st.composite
def lots(draw: st.DrawFn, code: str = "A-1", custom: bool = False) -> Lot:
    n = draw(st.integers(0, 2))
    config = {0: "free", 1: "one_option", 2: "two_options"}[n]
    if n and draw(st.booleans()):
        # a custom status holding options is unreachable (a sync to it ends them) and the
        # chart refuses to expire there: only the pure test goes there
        config = draw(
            st.sampled_from(["prereserved", "prereserved", "custom"][: 3 if custom else 2])
        )
    lot = Lot(
        code,
        config=config,
        version=draw(st.integers(1, 9)),
        sequence=draw(st.integers(1, 20)),
        rev=draw(st.integers(1, 30)),
        options=draw(options(n)),
    )
    lot.status = {"prereserved": "PRERESV", "free": "LIBRE", "custom": "ACTE"}.get(config, "OPTION")
    if config == "prereserved":
        lot.prereservation = Prereservation("p9", draw(st.sampled_from([None, "cgp"])), 1, 2, 3)
    if n == 1 and draw(st.booleans()) and draw(st.booleans()):
        lot.intents.append(Intent("i1", draw(st.sampled_from([1, 2])), "p8", None, TICK - 10))
        if lot.intents[0].rank == 1:
            lot.options[0].rank = 2  # an option waiting behind a pending rank 1
    lot.program = draw(st.sampled_from([None, "P1"]))
    lot.label = draw(st.sampled_from([None, "Lot 1 %"]))
    lot.secondary = draw(st.booleans())
    lot.link = "A-0" if lot.secondary else None
    lot.modified_at = TICK - 99
    return lot


@st.composite
def stored(draw: st.DrawFn, code: str = "A-1", custom: bool = False) -> bytes:
    """A stored lot: the codec's output, its option arrays possibly one element longer
    (a field appended by a later codec) or with only the 11 original elements."""
    raw = encode_lot(draw(lots(code, custom)))
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    for a in d.get("o", []):
        shape = draw(st.sampled_from(["as is", "as is", "11", "plus one"]))
        if shape == "11":
            del a[11:]
        elif shape == "plus one":
            a.append(draw(st.sampled_from([0, 1])))
    return raw[: bar + 1] + orjson.dumps(d)
