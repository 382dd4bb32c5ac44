"""The sweep's fast path: a common-shaped lot's expiry planned on its stored JSON.

A lot of one or two options, no pending intent, every due option on one tick, is decided
by the chart (through `ExpiryDecisions`) and written without decoding it into the data
model nor running `transitions.expire_due`: its events are filled into byte templates
(`event_templates`). Any other lot is declined (None) and left to the generic path. This
is the hot loop of a tick: written for speed, proved equal to the generic path by tests.
"""

from __future__ import annotations

from typing import Any

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
    OPT_VIA_API,
    decode_option,
    encode_option,
)
from service.storage.keys import API_USER_FIELD, prospect_field
from service.storage.store import LotStore
from service.storage.sweep_script import Plan, new_history
from service.usecases.event_templates import (
    EXPIRED,
    PROLONGED_JSON,
    PROMOTED,
    SOURCE_JSON,
    TIME_JSON,
    Templates,
    dumps,
    templates,
    time_json,
)
from statecharts.decide import COMPILED, DecisionEngine

_FACTS = {
    (d1, d2): {"rank1_due": d1, "rank2_due": d2} for d1 in (False, True) for d2 in (False, True)
}


class ExpiryDecisions:
    """The chart's answers the fast path needs: where an expiry ("expire", with the two
    due facts) or a promotion ("promote", no facts) leads from a configuration.

    Remembered when the engine allows it: asking is a good part of the fast path's time
    otherwise, and the answers are a pure function of the arguments. A refusal raises as
    the engine does and is not remembered."""

    __slots__ = ("_decide", "_memo")

    def __init__(self, engine: DecisionEngine = COMPILED) -> None:
        self._decide = engine.decide
        self._memo: dict[tuple[str, str, bool, bool], str] | None = (
            {} if engine.rememberable else None
        )

    def target(self, config: str, event: str, rank1_due: bool, rank2_due: bool) -> str:
        memo = self._memo
        if memo is not None:
            target = memo.get((config, event, rank1_due, rank2_due))
            if target is not None:
                return target
        facts = _FACTS[rank1_due, rank2_due] if event == "expire" else None
        target = self._decide(config, event, facts)
        if memo is not None:
            memo[config, event, rank1_due, rank2_due] = target
        return target


_FAST_CONFIGS = frozenset({"one_option", "two_options", "prereserved"})
# what `codec.encode_lot` may write for a lot the fast path takes ("s", "i" excluded)
_FAST_KEYS = frozenset({"c", "v", "q", "o", "r", "p", "l", "g", "k", "t", "m"})
_ONE: tuple[str, ...] = (EXPIRED,)
_TWO: tuple[str, ...] = (EXPIRED, EXPIRED)
_ONE_PROMOTED: tuple[str, ...] = (EXPIRED, PROMOTED)


def fast_expiry(
    store: LotStore,
    code: str,
    raw: bytes,
    tick: int,
    history: bytes | None = None,
    decisions: ExpiryDecisions | None = None,
) -> Plan | None:
    """The sweep's plan for a lot of a common shape, straight from its stored value `raw`
    (`history`: its stored history, which the plan's extends).

    Returns None when the lot is not of such a shape (pending intents, a custom status,
    due options on several ticks, a promotion restarting the clock...): the generic path
    decides those. The chart decides here as everywhere.
    """
    t = templates(store.tenant, store.public_base_url)
    if t is None:
        return None
    own = store.rules.rank2_clock == "own"
    return fast_plan(
        t, own, decisions or ExpiryDecisions(), code, raw, tick, history, store.history_cap
    )


def fast_plan(
    t: Templates,
    own: bool,
    decisions: ExpiryDecisions,
    code: str,
    raw: bytes,
    tick: int,
    old_history: bytes | None,
    cap: int,
) -> Plan | None:
    """`fast_expiry` with the tenant's templates, rank 2 clock and history cap at hand."""
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    config = d["c"]
    if config not in _FAST_CONFIGS or not d.keys() <= _FAST_KEYS:
        return None
    options = d.get("o")
    if not options or len(options) > 2:
        return None
    first: list[Any] = options[0]
    second: list[Any] | None = options[1] if len(options) == 2 else None
    due: tuple[list[Any], ...]
    if second is not None:
        if second[OPT_ID] == first[OPT_ID]:
            return None  # one id twice: only the generic path's keyed view says what it does
        if second[OPT_RANK] < first[OPT_RANK]:
            first, second = second, first
    e1 = first[OPT_EXPIRY]
    due1 = e1 is not None and e1 <= tick
    e2 = second[OPT_EXPIRY] if second is not None else None
    due2 = e2 is not None and e2 <= tick
    if due1 and due2:
        if e1 != e2:
            return None  # several ticks to replay: the generic path does it in order
        assert second is not None
        due, rest, at = (first, second), None, e1
    elif due1:
        due, rest, at = (first,), second, e1
    elif due2:
        assert second is not None
        due, rest, at = (second,), first, e2
    else:
        return None
    version, sequence = d["v"] + 1, d["q"]
    if type(at) is not int or type(sequence) is not int or type(version) is not int:
        return None  # the templates write integers with %d
    target = decisions.target(config, "expire", due1, due2)
    kinds = _TWO if rest is None and second is not None else _ONE
    if rest is not None:
        kept = decode_option(rest)  # re-encoded through the codec, as the generic path does
        if kept.rank == 2:
            if not own:
                return None
            decisions.target(target, "promote", False, False)
            kept.rank = 1
            kinds = _ONE_PROMOTED
        rest = encode_option(kept)
        d["o"] = [rest]
    else:
        del d["o"]
    d["c"] = target
    d["v"] = version
    d["q"] = sequence + len(kinds)
    d["m"] = tick

    cj = dumps(code)
    cid = cj[:-1]
    at_json = TIME_JSON.get(at) or time_json(at)
    cloud, history = t.cloud[EXPIRED], t.history[EXPIRED]
    a = due[0]
    sequence += 1
    first_cloud, first_line = _render(cloud, history, a, cid, cj, at_json, at, sequence, version)
    ended = f"{code}/{a[OPT_ID]}"
    holder = a[OPT_HOLDER]
    if len(due) == 1:
        stream: tuple[bytes, ...] = (first_cloud,)
        lines = first_line
        removed: tuple[str, ...] = (ended,)
        if holder is None:
            counts: tuple[Any, ...] = (API_USER_FIELD, -1) if a[OPT_VIA_API] else ()
            tombs: tuple[str, ...] = ()
        else:
            field = prospect_field(holder)
            counts = (field, -1, API_USER_FIELD, -1) if a[OPT_VIA_API] else (field, -1)
            tombs = (f"{code}|{holder}|{a[OPT_DEADLINE]}|{a[OPT_ID]}",)
    else:
        b = due[1]
        sequence += 1
        second_cloud, second_line = _render(
            cloud, history, b, cid, cj, at_json, at, sequence, version
        )
        stream = (first_cloud, second_cloud)
        lines = first_line + b"\n" + second_line
        removed = (ended, f"{code}/{b[OPT_ID]}")
        fields: list[Any] = []
        ended_held: list[str] = []
        for o in due:
            if o[OPT_HOLDER] is not None:
                fields += (prospect_field(o[OPT_HOLDER]), -1)
                ended_held.append(f"{code}|{o[OPT_HOLDER]}|{o[OPT_DEADLINE]}|{o[OPT_ID]}")
        via_api = (1 if a[OPT_VIA_API] else 0) + (1 if b[OPT_VIA_API] else 0)
        if via_api:
            fields += (API_USER_FIELD, -via_api)
        counts, tombs = tuple(fields), tuple(ended_held)
    if kinds is _ONE_PROMOTED:
        assert rest is not None
        sequence += 1
        promoted, line = _render(
            t.cloud[PROMOTED], t.history[PROMOTED], rest, cid, cj, at_json, at, sequence, version
        )
        stream += (promoted,)
        lines += b"\n" + line
    value = b"%d|" % (int(raw[:bar]) + 1) + dumps(d)
    return Plan(
        code,
        raw[: bar + 1],
        value,
        new_history(old_history, lines, cap),
        removed,
        (),
        counts,
        tombs,
        stream,
        kinds,
    )


def _render(
    cloud: bytes,
    history: bytes,
    a: list[Any],
    cid: bytes,
    cj: bytes,
    at_json: bytes,
    at: int,
    sequence: int,
    version: int,
) -> tuple[bytes, bytes]:
    """One option event from the templates: its CloudEvent and its history entry
    (`event_templates.option_pieces`, inlined)."""
    times = TIME_JSON
    oid, rank = dumps(a[OPT_ID]), dumps(a[OPT_RANK])
    third, partner = dumps(a[OPT_HOLDER]), dumps(a[OPT_PARTNER])
    pa, dl, ex = a[OPT_PLACED_AT], a[OPT_DEADLINE], a[OPT_EXPIRY]
    source = SOURCE_JSON[1 if a[OPT_KOBAN_SOURCE] else 0]
    prolonged = PROLONGED_JSON[1 if a[OPT_PROLONGED] else 0]
    return (
        cloud
        % (cid, sequence, cj, at_json, cj, sequence, version, oid, rank, third, partner,
           (type(pa) is int and times.get(pa)) or time_json(pa),
           (type(dl) is int and times.get(dl)) or time_json(dl),
           (type(ex) is int and times.get(ex)) or time_json(ex),
           source, prolonged),
        history
        % (sequence, version, at, oid, rank, third, partner, dumps(pa), dumps(dl), dumps(ex),
           source, prolonged),
    )  # fmt: skip
