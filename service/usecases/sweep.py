"""The sweep: make every expiry due at or before a tick durable, with its events.

``expire_due(store, tick)`` is what the scheduler calls at each :00 / :30 (and for every
missed tick at start-up). It reads the expiry index in windows and works in chunks of at
most `batch` options (500):

1. read the chunk's lots (one MGET);
2. decide each lot with the chart's compiled form — a lot of a common shape (one or two
   options, no pending intent, every due option on one tick) directly on its stored JSON
   (`fast_expiry`, its events filled into byte templates derived from `service.storage.events`),
   any other lot through the generic path (`generic_expiry`: decode,
   `transitions.expire_due`, `store.transition`) — no chart object per option; both give
   the same plan (proved by tests/test_sweep_fast.py);
3. apply the chunk with one call of ``sweep.lua``: it checks that no lot's revision moved
   since step 1, then writes lot values, histories, indexes, counts, tombstones and stream
   entries with commands batched over the chunk, leaving Redis exactly as ``commit.lua``
   leaves it for the generic path's transitions (proved by the same tests).

A lot an API write changed after step 1 fails the revision check: nothing of the chunk is
written, the sweep resubmits the chunk without that lot, and reads that lot again in the
next window. Everything goes over one connection, pipelined (reads two chunks ahead), so
Redis and Python each keep one core busy: chunk i is decided while Redis applies chunks
i-1 and i-2. Each script call is atomic, so a crash loses nothing (what is left is still in
the index) and duplicates nothing (what was done is no longer in it); running the sweep
twice changes nothing the second time. A call of 500 options holds Redis ≈ 4 ms; other
clients are served between calls.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, WatchError

from service.storage.codec import _opt, _unopt, decode_lot
from service.storage.events import cloud_event, event_id, history_entry, iso
from service.storage.keys import API_USER_FIELD, prospect_field
from service.storage.redis_client import own_connection
from service.storage.scripts import lua_script
from service.storage.store import LotStore, view
from statecharts import transitions as tr
from statecharts.model import DomainEvent, Option, Rules

LUA_SWEEP = lua_script("sweep.lua")
MAX_BATCH = 2000  # the script unpacks per-lot keys onto Lua's stack (limit 8000)
READ_AHEAD = 2  # chunks read ahead of the one being decided

EXPIRED = "option.expired"
PROMOTED = "option.promoted"

# A plan: what one lot's transition writes, in the layout sweep.lua takes. Its lot score
# and tombstone scores are the sweep's tick (as `store.transition` sets them).
#  0 extcode, 1 expected value prefix b"<rev>|", 2 new value, 3 history lines joined by \n
#  (once `with_history` has run: the lot's whole new history, as sweep.lua writes it),
#  4 expiry removals (member, ...), 5 expiry additions (score, member, ...),
#  6 count deltas (field, delta, ...), 7 tombstones (member, ...),
#  8 stream entries (cloudevent, ...), 9 event types
# Tuples all through: once the collector has seen them it stops tracking them.
Plan = tuple[
    str,
    bytes,
    bytes,
    bytes,
    tuple[str, ...],
    tuple[Any, ...],
    tuple[Any, ...],
    tuple[str, ...],
    tuple[bytes, ...],
    tuple[str, ...],
]


@dataclass(slots=True)
class SweepReport:
    tick: int
    lots: int = 0
    expired: int = 0
    promoted: int = 0
    batches: int = 0
    retried: int = 0
    repaired: int = 0
    fast: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)

    def count(self, types: Iterable[str]) -> None:
        self.lots += 1
        for t in types:
            self.events_by_type[t] = self.events_by_type.get(t, 0) + 1
            if t == EXPIRED:
                self.expired += 1
            elif t == PROMOTED:
                self.promoted += 1


# --- templated events ---------------------------------------------------------------------
#
# The fast path writes an option event's CloudEvent and history entry by filling byte
# templates. The templates are not written by hand: they are `service.storage.events`' own output
# for sentinel values, with each sentinel replaced by a slot, and they are checked against
# `service.storage.events` on real values before use. If the builders ever produce something the
# templates cannot express (a new field, another order), there are no templates and every
# lot takes the generic path: slower, never different.

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
_dumps = orjson.dumps


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
    return DomainEvent(type_, _TIME, tr.option_data(o, "sweep"))


@dataclass(frozen=True, slots=True)
class _Templates:
    cloud: dict[str, bytes]  # type -> CloudEvent template
    history: dict[str, bytes]  # type -> history entry template


def _derive(tenant: str) -> _Templates | None:
    cloud: dict[str, bytes] = {}
    history: dict[str, bytes] = {}
    slots = [(_dumps(s), b"%s") for s in _SENTINELS]
    for type_ in (EXPIRED, PROMOTED):
        sample = _sample_event(type_)
        expected = (*zip(_OPTION_KEYS, _SENTINELS, strict=False), ("actor", "sweep"))
        if tuple(sample.data.items()) != expected:
            return None  # option_data is not the field-for-field copy the slots stand for
        code = _dumps(_CODE)
        if _dumps(event_id(_CODE, _SEQ)) != code[:-1] + b'-%012d"' % _SEQ:
            return None
        c = _fill(
            cloud_event(tenant, _CODE, sample, _SEQ, _VER),
            [
                (_dumps(event_id(_CODE, _SEQ)), b'%s-%012d"'),
                (code, b"%s"),
                (_dumps(iso(_TIME)), b"%s"),
                (code, b"%s"),
                (_dumps(f"{_SEQ:012d}"), b'"%012d"'),
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
    templates = _Templates(cloud, history)
    if not _self_check(tenant, templates):
        return None
    return templates


def _self_check(tenant: str, t: _Templates) -> bool:
    """The templates against `service.storage.events` on real values (the tests do it at random)."""
    samples = [
        ['o-"1"\\', 2, "p\u00e9\n%s", None, 1_795_000_000, None, 1_795_003_200, 1, 1, None, 0],
        ["o2", 1, None, "cgp", 1_700_000_001, 1_700_000_002, 1_700_001_800, 0, 0, 5, 1],
    ]
    for a in samples:
        for type_ in (EXPIRED, PROMOTED):
            e = DomainEvent(type_, 1_795_003_200, tr.option_data(_unopt(a), "sweep"))
            pieces = _pieces(a)
            code = _dumps('L"%1')
            c = t.cloud[type_] % (code[:-1], 7, code, _time_json(e.time), code, 7, 3, *pieces[0])
            h = t.history[type_] % (7, 3, e.time, *pieces[1])
            if c != cloud_event(tenant, 'L"%1', e, 7, 3) or h != history_entry(e, 7, 3):
                return False
    return True


_TEMPLATES: dict[str, _Templates | None] = {}


def templates(tenant: str) -> _Templates | None:
    if tenant not in _TEMPLATES:
        _TEMPLATES[tenant] = _derive(tenant)
    return _TEMPLATES[tenant]


_TIME_JSON: dict[int, bytes] = {}


def _time_json(v: object) -> bytes:
    """An instant of an event on the wire, as `service.storage.events` writes it (ISO when int)."""
    if isinstance(v, int):
        j = _TIME_JSON.get(v)
        if j is None:
            if len(_TIME_JSON) >= 1 << 16:
                _TIME_JSON.clear()
            j = _TIME_JSON[v] = _dumps(iso(v))
        return j
    return _dumps(v)


_SOURCE = (b'"estimated"', b'"koban"')
_PROLONGED = (b"false", b"true")


def _pieces(a: list[Any]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """A stored option's JSON pieces for the CloudEvent's and the history's data slots."""
    oid, rank, third, partner = _dumps(a[0]), _dumps(a[1]), _dumps(a[2]), _dumps(a[3])
    source, prolonged = _SOURCE[1 if a[8] else 0], _PROLONGED[1 if a[7] else 0]
    wire_times = _time_json(a[4]), _time_json(a[5]), _time_json(a[6])
    return (
        (oid, rank, third, partner, *wire_times, source, prolonged),
        (oid, rank, third, partner, _dumps(a[4]), _dumps(a[5]), _dumps(a[6]), source, prolonged),
    )


# --- deciding one lot -------------------------------------------------------------------

_FAST_CONFIGS = frozenset({"one_option", "two_options", "prereserved"})
# what `codec.encode_lot` may write for a lot the fast path takes ("s", "i" excluded)
_FAST_KEYS = frozenset({"c", "v", "q", "o", "r", "p", "l", "g", "k", "t", "m"})
_FACTS = {
    (d1, d2): {"rank1_due": d1, "rank2_due": d2} for d1 in (False, True) for d2 in (False, True)
}
_ONE: tuple[str, ...] = (EXPIRED,)
_TWO: tuple[str, ...] = (EXPIRED, EXPIRED)
_ONE_PROMOTED: tuple[str, ...] = (EXPIRED, PROMOTED)


_COMPILED_DECIDE = tr.decide  # the compiled table's (statecharts.decide)
_DECIDED: dict[tuple[str, str, bool, bool], str] = {}


def _decided(config: str, event: str, rank1_due: bool, rank2_due: bool) -> str:
    """`tr.decide` for an expiry ("expire", with the two due facts) or a promotion
    ("promote", no facts), its answers remembered: the compiled table's are a pure
    function of the arguments, and asking it cost ≈ 8 % of the sweep's Python time. A
    refusal raises as `decide` does and is not remembered. While another engine stands in
    for the table (`bench/sweep.py`'s chart-object-per-decision baseline) it is asked
    every time."""
    decide = tr.decide
    if decide is _COMPILED_DECIDE:
        target = _DECIDED.get((config, event, rank1_due, rank2_due))
        if target is not None:
            return target
    facts = _FACTS[rank1_due, rank2_due] if event == "expire" else None
    target = decide(config, event, facts)
    if decide is _COMPILED_DECIDE:
        _DECIDED[config, event, rank1_due, rank2_due] = target
    return target


def fast_expiry(store: LotStore, code: str, raw: bytes, tick: int) -> Plan | None:
    """The sweep's plan for a lot of a common shape, straight from its stored JSON.

    Returns None when the lot is not of such a shape (pending intents, a custom status,
    due options on several ticks, a promotion restarting the clock...): the generic path
    decides those. The chart decides here as everywhere (`decide`). This is the hot loop of
    a tick (100 000 lots): written for speed, proved equal to the generic path by tests.
    """
    t = templates(store.tenant)
    if t is None:
        return None
    return _fast(t, store.rules.rank2_clock == "own", code, raw, tick)


def _fast(t: _Templates, own: bool, code: str, raw: bytes, tick: int) -> Plan | None:
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
        if second[0] == first[0]:
            return None  # one id twice: only the generic path's keyed view says what it does
        if second[1] < first[1]:
            first, second = second, first
    e1 = first[6]
    due1 = e1 is not None and e1 <= tick
    e2 = second[6] if second is not None else None
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
    target = _decided(config, "expire", due1, due2)
    kinds = _TWO if rest is None and second is not None else _ONE
    if rest is not None:
        kept = _unopt(rest)  # re-encoded through the codec, as the generic path does
        if kept.rank == 2:
            if not own:
                return None
            _decided(target, "promote", False, False)
            kept.rank = 1
            kinds = _ONE_PROMOTED
        rest = _opt(kept)
        d["o"] = [rest]
    else:
        del d["o"]
    d["c"] = target
    d["v"] = version
    d["q"] = sequence + len(kinds)
    d["m"] = tick

    cj = _dumps(code)
    cid = cj[:-1]
    at_json = _TIME_JSON.get(at) or _time_json(at)
    cloud, history = t.cloud[EXPIRED], t.history[EXPIRED]
    a = due[0]
    sequence += 1
    first_cloud, first_line = _render(cloud, history, a, cid, cj, at_json, at, sequence, version)
    ended = f"{code}/{a[0]}"
    holder = a[2]
    if len(due) == 1:
        stream: tuple[bytes, ...] = (first_cloud,)
        lines = first_line
        removed: tuple[str, ...] = (ended,)
        if holder is None:
            counts: tuple[Any, ...] = (API_USER_FIELD, -1) if a[10] else ()
            tombs: tuple[str, ...] = ()
        else:
            field = prospect_field(holder)
            counts = (field, -1, API_USER_FIELD, -1) if a[10] else (field, -1)
            tombs = (f"{code}|{holder}|{a[5]}|{a[0]}",)
    else:
        b = due[1]
        sequence += 1
        second_cloud, second_line = _render(
            cloud, history, b, cid, cj, at_json, at, sequence, version
        )
        stream = (first_cloud, second_cloud)
        lines = first_line + b"\n" + second_line
        removed = (ended, f"{code}/{b[0]}")
        fields: list[Any] = []
        ended_held: list[str] = []
        for o in due:
            if o[2] is not None:
                fields += (prospect_field(o[2]), -1)
                ended_held.append(f"{code}|{o[2]}|{o[5]}|{o[0]}")
        via_api = (1 if a[10] else 0) + (1 if b[10] else 0)
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
    value = b"%d|" % (int(raw[:bar]) + 1) + _dumps(d)
    return (code, raw[: bar + 1], value, lines, removed, (), counts, tombs, stream, kinds)


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
    """One option event from the templates: its CloudEvent and its history entry."""
    dumps, times = _dumps, _TIME_JSON
    oid, rank, third, partner = dumps(a[0]), dumps(a[1]), dumps(a[2]), dumps(a[3])
    pa, dl, ex = a[4], a[5], a[6]
    source = _SOURCE[1 if a[8] else 0]
    prolonged = _PROLONGED[1 if a[7] else 0]
    return (
        cloud
        % (cid, sequence, cj, at_json, cj, sequence, version, oid, rank, third, partner,
           (type(pa) is int and times.get(pa)) or _time_json(pa),
           (type(dl) is int and times.get(dl)) or _time_json(dl),
           (type(ex) is int and times.get(ex)) or _time_json(ex),
           source, prolonged),
        history
        % (sequence, version, at, oid, rank, third, partner, dumps(pa), dumps(dl), dumps(ex),
           source, prolonged),
    )  # fmt: skip


def generic_expiry(
    store: LotStore, code: str, raw: bytes, tick: int
) -> tuple[list[Any], list[DomainEvent]] | None:
    """The reference: decode, `transitions.expire_due`, `store.transition` (for commit.lua)."""
    lot = decode_lot(code, raw)
    before = view(lot)
    events = tr.expire_due(lot, tick, store.rules)
    if not events:
        return None
    return store.transition(before, lot, events, tick), events


def plan_of(transition: list[Any], events: list[DomainEvent], expected: bytes, tick: int) -> Plan:
    """A `store.transition` at `tick` (commit.lua's layout) as a sweep plan."""
    (_, value, code, score, exp_rem, exp_add, counts, tombs, int_rem, int_add) = transition[:10]
    if int_rem or int_add or score != tick or any(s != tick for s in tombs[1::2]):
        # expiries never add or drop pending intents; lots and tombstones are scored `now`
        raise ValueError(f"lot {code}: not a sweep transition at {tick}")
    deltas: list[Any] = []
    for f, delta, limit in zip(counts[0::3], counts[1::3], counts[2::3], strict=True):
        if limit and delta > 0:
            raise ValueError(f"lot {code}: a checked count increase in a sweep transition")
        deltas += (f, delta)
    return (
        code,
        expected,
        value,
        b"\n".join(transition[11]),
        tuple(exp_rem),
        tuple(exp_add),
        tuple(deltas),
        tuple(tombs[0::2]),
        tuple(transition[10]),
        tuple(e.type for e in events),
    )


def plan_expiry(store: LotStore, code: str, raw: bytes, tick: int) -> Plan | None:
    """The plan for one lot: the fast path when it takes the lot, else the generic path."""
    plan = fast_expiry(store, code, raw, tick)
    if plan is not None:
        return plan
    result = generic_expiry(store, code, raw, tick)
    if result is None:
        return None
    return plan_of(result[0], result[1], raw[: raw.index(b"|") + 1], tick)


# --- applying chunks --------------------------------------------------------------------


def trim_history(history: bytes, cap: int) -> bytes:
    """`history` (entries joined by "\n") cut to its last `cap` entries: `lib.lua`'s
    ``trim_history``, which commit.lua applies (the sweep's equality tests hold them to
    the same result)."""
    if len(history) <= cap * 48:  # no entry is shorter than 48 bytes
        return history
    entries = history.split(b"\n")
    if len(entries) <= cap:
        return history
    return b"\n".join(entries[-cap:])


def with_history(plan: Plan, old: bytes | None, cap: int) -> Plan:
    """`plan` with its new history entries (``plan[3]``) appended to the lot's stored
    history `old` and trimmed, as commit.lua does: what sweep.lua writes as it is.

    Python does this, not the script, because Redis is the sweep's busier side: the
    history is read with the lot (one MGET) and sent back whole (README "Benchmarks")."""
    lines = plan[3]
    history = trim_history(lines if old is None else old + b"\n" + lines, cap)
    return (plan[0], plan[1], plan[2], history, *plan[4:])


_HEADS = [b"$%d\r\n" % n for n in range(4096)]
_CRLF = b"\r\n"


def pack(args: list[Any]) -> bytes:
    """One command in RESP, as hiredis' pack_command writes it (but faster for the sweep's
    thousands of arguments). One bytes object: asyncio sends a list one piece at a time."""
    out = [b"*%d\r\n" % len(args)]
    _bulks(out, [_arg(a) for a in args])
    return b"".join(out)


def _arg(a: Any) -> bytes:
    if a.__class__ is bytes:
        return a
    if a.__class__ is str:
        return a.encode()
    if a.__class__ is int:
        return b"%d" % a
    raise TypeError(f"cannot send {a!r} to Redis")


def _bulks(out: list[bytes], items: list[bytes]) -> None:
    """Append `items` to `out` as RESP bulk strings (joined once, at the end)."""
    heads, top = _HEADS, len(_HEADS)
    for x in items:
        n = len(x)
        out += (heads[n] if n < top else b"$%d\r\n" % n, x, _CRLF)


def apply_command(store: LotStore, sha: str, tick: int, plans: list[Plan]) -> bytes:
    """The EVALSHA applying `plans`, packed (sweep.lua's
    layout). Built section by section: packing is a good part of the sweep's Python time."""
    k = store.keys
    removed = [m.encode() for p in plans for m in p[4]]
    added = [_arg(x) for p in plans for x in p[5]]
    deltas: dict[str, int] = {}
    for p in plans:
        c = p[6]
        for i in range(0, len(c), 2):
            deltas[c[i]] = deltas.get(c[i], 0) + c[i + 1]
    fields = [f for f, v in deltas.items() if v]
    changed = [x for f in fields for x in (f.encode(), b"%d" % deltas[f])]
    tombs = [m.encode() for p in plans for m in p[7]]
    events = [e for p in plans for e in p[8]]
    head = [sha, 5, k.counts, k.expiries, k.lots, k.tombstones, k.events, k.prefix, tick]
    if store.cluster:  # every key declared, after the five (sweep.lua)
        head[1] = 5 + 2 * len(plans)
        head[7:7] = [k.lot(p[0]) for p in plans] + [k.history(p[0]) for p in plans]
    sections = [
        [_arg(a) for a in head],
        [b"%d" % len(plans)],
        [p[0].encode() for p in plans],
        [p[1] for p in plans],
        [p[2] for p in plans],
        [p[3] for p in plans],
        [b"%d" % len(removed)],
        removed,
        [b"%d" % (len(added) // 2)],
        added,
        [b"%d" % (len(changed) // 2)],
        changed,
        [b"%d" % len(tombs)],
        tombs,
        [b"%d" % len(events)],
        events,
    ]
    out = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (1 + sum(map(len, sections)))]
    for section in sections:
        _bulks(out, section)
    return b"".join(out)


def chunks(members: list[bytes], batch: int) -> tuple[list[list[str]], list[bytes]]:
    """The lots of an index window, in order, at most `batch` index entries a chunk; and
    the entries that name no lot (no "/": only outside tampering writes those)."""
    per_lot: dict[bytes, int] = {}
    malformed: list[bytes] = []
    for m in members:
        slash = m.rfind(b"/")
        if slash < 0:
            malformed.append(m)
            continue
        code = m[:slash]
        per_lot[code] = per_lot.get(code, 0) + 1
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for code, n in per_lot.items():
        if current and size + n > batch:
            out.append(current)
            current, size = [], 0
        current.append(code.decode())
        size += n
    if current:
        out.append(current)
    return out, malformed


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a chunk is decided and packed.

    A chunk allocates a dozen containers per lot, most alive until it is sent: the collector
    would walk them again and again to find nothing (measured: ≈ 1.5 µs per lot, over a
    tenth of the sweep's Python time). Used only around code that does not await, so no
    other task runs meanwhile; the collector runs as usual right after.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Sweeper:
    """One sweep over one connection: commands are sent ahead, replies read in order."""

    def __init__(self, store: LotStore, tick: int, batch: int, window: int) -> None:
        self.store = store
        self.tick = tick
        self.batch = batch
        self.window = window
        self.report = SweepReport(tick)
        self.sha = ""
        self.conn: AbstractConnection | None = None
        # what each reply not read yet answers: ("range", None) | ("read", codes) |
        # ("apply", plans)
        self.expected: deque[tuple[str, Any]] = deque()

    async def send(self, kind: str, what: Any, args: list[Any]) -> None:
        await self.send_packed(kind, what, pack(args))

    async def send_packed(self, kind: str, what: Any, command: bytes) -> None:
        assert self.conn is not None
        await self.conn.send_packed_command(command, check_health=False)
        self.expected.append((kind, what))

    async def send_range(self) -> None:
        k = self.store.keys
        args = ["ZRANGEBYSCORE", k.expiries, "-inf", self.tick, "LIMIT", 0, self.window]
        await self.send("range", None, args)

    async def send_read(self, codes: list[str]) -> None:
        """The chunk's lots and their histories, in one MGET (the lots first)."""
        k = self.store.keys
        lot_key, history_key = k.lot(""), k.history("")
        keys = [lot_key + c for c in codes] + [history_key + c for c in codes]
        await self.send("read", codes, ["MGET", *keys])

    async def send_apply(self, plans: list[Plan], command: bytes | None = None) -> None:
        """Queue the script call applying `plans` (`command`: it, packed already)."""
        if command is None:
            command = apply_command(self.store, self.sha, self.tick, plans)
        await self.send_packed("apply", plans, command)

    async def read_one(self) -> tuple[str, Any, Any] | None:
        """The next reply; an apply's reply is settled here and gives None."""
        assert self.conn is not None
        kind, what = self.expected.popleft()
        try:
            reply = await self.conn.read_response()
        except NoScriptError:  # the script cache was flushed: load it, apply again
            if kind != "apply":
                raise
            self.sha = await self.store.redis.script_load(LUA_SWEEP)
            await self.send_apply(what)
            return None
        if kind != "apply":
            return kind, what, reply
        await self.settle(what, reply)
        return None

    async def next_reply(self, kind: str) -> Any:
        while (got := await self.read_one()) is None:
            pass
        assert got[0] == kind
        return got[2]

    async def settle(self, plans: list[Plan], moved: list[int]) -> None:
        if not moved:
            for p in plans:
                self.report.count(p[9])
            return
        # A writer changed these lots after we read them: nothing was written; the others
        # go again at once, these are read again in the next window.
        self.report.retried += len(moved)
        skip = set(moved)
        keep = [p for i, p in enumerate(plans, 1) if i not in skip]
        if keep:
            await self.send_apply(keep)

    async def run(self) -> SweepReport:
        store = self.store
        self.sha = await store.redis.script_load(LUA_SWEEP)
        # The tenant's server (on a cluster, the master of its slot); disconnected rather
        # than reused if we leave with replies unread.
        async with own_connection(store.redis, store.keys.expiries) as conn:
            self.conn = conn
            await self.send_range()
            while True:
                members = await self.next_reply("range")
                lots, malformed = chunks(members, self.batch)
                if malformed:
                    await store.redis.zrem(store.keys.expiries, *malformed)
                    self.report.repaired += len(malformed)
                if lots:
                    await self.window_of(lots)
                    continue
                if not self.expected and not malformed:
                    break
                while self.expected:  # resubmitted chunks still in flight: then look again
                    await self.read_one()
                await self.send_range()
        return self.report

    async def window_of(self, lots: list[list[str]]) -> None:
        """Decide and apply one window's chunks; the next window's range goes out last.

        Reads go out two chunks ahead, so Redis has the next apply queued while Python
        decides: chunk i is decided while Redis applies chunks i-1 and i-2.
        """
        ahead = READ_AHEAD
        for codes in lots[:ahead]:
            await self.send_read(codes)
        for i, codes in enumerate(lots):
            if i + ahead < len(lots):
                await self.send_read(lots[i + ahead])
            values = await self.next_reply("read")
            n = len(codes)
            with _collector_paused():  # no awaits inside: no other task runs meanwhile
                plans, broken = self.decide(codes, values[:n], values[n:])
                command = apply_command(self.store, self.sha, self.tick, plans) if plans else b""
            if plans:
                await self.send_apply(plans, command)
                self.report.batches += 1
            if i + 1 == len(lots):
                await self.send_range()  # runs after every apply sent so far
            for code in broken:
                if await _repair(self.store, code):
                    self.report.repaired += 1

    def decide(
        self, codes: list[str], raws: list[bytes | None], histories: list[bytes | None]
    ) -> tuple[list[Plan], list[str]]:
        """Plans for the chunk's lots (each with its whole new history: `with_history`),
        and the lots to repair."""
        store, tick, report = self.store, self.tick, self.report
        t = templates(store.tenant)
        own = store.rules.rank2_clock == "own"
        cap = store.history_cap
        plans: list[Plan] = []
        broken: list[str] = []
        for code, raw, history in zip(codes, raws, histories, strict=True):
            if raw is None:
                broken.append(code)
                continue
            plan = _fast(t, own, code, raw, tick) if t is not None else None
            if plan is not None:
                report.fast += 1
            else:
                result = generic_expiry(store, code, raw, tick)
                if result is None:  # index entries <= tick, nothing due: outside tampering
                    broken.append(code)
                    continue
                plan = plan_of(result[0], result[1], raw[: raw.index(b"|") + 1], tick)
            plans.append(with_history(plan, history, cap))
        return plans, broken


async def expire_due(
    store: LotStore, tick: int, batch: int = 500, window: int | None = None
) -> SweepReport:
    """Expire every option with effective expiry <= `tick` (one event per change).

    `batch` bounds the options (expiry index entries) of one atomic script call (at most
    `MAX_BATCH`); `window` the index entries read at once (default 40 chunks).
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    batch = min(batch, MAX_BATCH)
    return await _Sweeper(store, tick, batch, window or batch * 40).run()


async def _repair(store: LotStore, code: str) -> bool:
    """Make the expiry index say exactly what the lot holds (or drop a vanished lot's).

    Only outside tampering makes them disagree (index entries <= tick for options not due,
    or for a lot that does not exist); the sweep rewrites the lot's entries rather than
    spin on them. Done under WATCH of the lot, so a concurrent write is never undone.
    Returns whether anything had to change.
    """
    keys = store.keys
    prefix = code.encode() + b"/"
    for _ in range(store.max_attempts):
        pipe: Any
        async with store.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.lot(code))
            raw = cast(bytes | None, await pipe.get(keys.lot(code)))
            mine = {
                m: s
                async for m, s in store.redis.zscan_iter(
                    keys.expiries, match=_glob_escape(code) + "/*"
                )
                if m.startswith(prefix) and b"/" not in m[len(prefix) :]
            }
            want = {} if raw is None else view(decode_lot(code, raw)).expiries
            if mine == {m.encode(): float(s) for m, s in want.items()}:
                await pipe.reset()
                return False
            pipe.multi()
            if mine:
                pipe.zrem(keys.expiries, *mine)
            if want:
                pipe.zadd(keys.expiries, want)
            try:
                await pipe.execute()
                return True
            except WatchError:
                continue
    return False


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


__all__ = [
    "Plan",
    "Rules",
    "SweepReport",
    "expire_due",
    "fast_expiry",
    "generic_expiry",
    "plan_expiry",
    "plan_of",
]
