"""``sweep.lua``'s Python side: a lot's expiry as the script writes it (`Plan`), and the
script call applying a chunk of them, packed.

The script applies a chunk exactly as ``commit.lua`` (mode "each") applies the same
transitions, all or nothing and with every command batched across the chunk; its header
says the argument layout, which `apply_command` follows section by section.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from service.storage.keys import TenantKeys
from service.storage.resp import append_bulks, encode_arg
from service.storage.scripts import lua_script

LUA_SWEEP = lua_script("sweep.lua")
# Redis names a script by the SHA-1 of its text: the sweep calls it by this name.
SWEEP_SHA = hashlib.sha1(LUA_SWEEP.encode()).hexdigest()
MAX_BATCH = 2000  # the script unpacks per-lot keys onto Lua's stack (limit 8000)


class Plan(NamedTuple):
    """What one lot's expiry writes. Its lot score and tombstone scores are the sweep's
    tick (as `LotStore.transition` sets them). Tuples all through: once the garbage
    collector has seen them it stops tracking them."""

    extcode: str
    expected: bytes  # the prefix b"<rev>|" the lot's value must still have
    value: bytes  # the lot's new value
    history: bytes  # the lot's whole new history: entries joined by "\n", trimmed
    expiry_removals: tuple[str, ...]  # expiry index members
    expiry_additions: tuple[Any, ...]  # (score, member, ...)
    count_deltas: tuple[Any, ...]  # (field, delta, ...), a field possibly more than once
    tombstones: tuple[str, ...]  # members, scored by the tick
    stream: tuple[bytes, ...]  # CloudEvents, in order
    event_types: tuple[str, ...]  # the domain events' types, in order


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


def new_history(old: bytes | None, lines: bytes, cap: int) -> bytes:
    """The lot's stored history `old` with the new entries `lines` appended and trimmed, as
    commit.lua does: what sweep.lua writes as it is.

    Python does this, not the script, because Redis is the sweep's busier side: the
    history is read with the lot (one MGET) and sent back whole."""
    return trim_history(lines if old is None else old + b"\n" + lines, cap)


def apply_command(keys: TenantKeys, cluster: bool, sha: str, tick: int, plans: list[Plan]) -> bytes:
    """The EVALSHA applying `plans`, packed in sweep.lua's layout (`cluster`: every key
    declared). Built section by section: packing is a good part of the sweep's Python
    time."""
    removed = [m.encode() for p in plans for m in p.expiry_removals]
    added = [encode_arg(x) for p in plans for x in p.expiry_additions]
    deltas: dict[str, int] = {}
    for p in plans:
        c = p.count_deltas
        for i in range(0, len(c), 2):
            deltas[c[i]] = deltas.get(c[i], 0) + c[i + 1]
    fields = [f for f, v in deltas.items() if v]
    changed = [x for f in fields for x in (f.encode(), b"%d" % deltas[f])]
    tombs = [m.encode() for p in plans for m in p.tombstones]
    events = [e for p in plans for e in p.stream]
    k = keys
    head: list[Any] = [sha, 5, k.counts, k.expiries, k.lots, k.tombstones, k.events]
    if cluster:  # every key declared, after the five
        head[1] = 5 + 2 * len(plans)
        head += [k.lot(p.extcode) for p in plans] + [k.history(p.extcode) for p in plans]
    head += [k.lot_prefix, k.history_prefix, tick]
    sections = [
        [encode_arg(a) for a in head],
        [b"%d" % len(plans)],
        [p.extcode.encode() for p in plans],
        [p.expected for p in plans],
        [p.value for p in plans],
        [p.history for p in plans],
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
        append_bulks(out, section)
    return b"".join(out)
