"""Expiring notices (SPEC §3): ``koban.option.expiring``, `expiring_notice` (a tenant
setting, default PT2H) before an option's expiry tick, once per option.

A notice is a transition of its own: the option is marked `noticed`, the lot's version is
bumped and ``option.expiring`` is published with the option's data (actor ``sweep``), its
``time`` the notice's due instant (effective expiry − `expiring_notice`, or the placement
when later). The data change is `statecharts.transitions.expiring_notices` (pure).

Finding them without scanning every option each minute: a per-tenant cursor
(`TenantKeys.notice_cursor`, only moves forward) holds the highest expiry already
scanned. A run up to the instant `u` reads the expiry index over ``(cursor, u + notice]``,
one score (a tick) at a time, reads those lots in batches, gives the notices due by `u`,
commits each batch through ``commit.lua`` (each lot guarded by its revision: a lot that
changed meanwhile is read and decided again, so two runs never send one notice twice), and
then raises the cursor. Lots are decided on their stored JSON (`notice_transition`: a
notice changes no index nor count), proved equal to the generic path by a test.

Options that appear later with an expiry the cursor has passed (placed, placed by webhook,
promoted with a restarted clock, prolonged into the window, a deadline learned from Koban)
get their notice from the transition that put them there (`LotStore.mutate` and the
transitions check ``expiry − notice ≤ now``).

The cursor is left `NOTICE_LAG_S` behind ``u + notice``: a transition decided just before
`u` (its ``now`` a moment earlier) and committed after this run read the index would
otherwise fall between the two checks; the next run reads that stretch again (lots whose
options are all noticed cost one JSON parse).

With no cursor yet (a fresh install) the first run starts at `u`: options expiring at or
before the first run's instant get no notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.storage.codec import decode_lot
from service.storage.expiry_index import (
    lots_expiring_at,
    next_expiry,
    notice_cursor,
    raise_notice_cursor,
)
from service.storage.lot_reads import raw_lots
from service.storage.store import LotStore, StoreConflict, view
from statecharts import transitions as tr
from statecharts.model import DomainEvent

__all__ = [
    "NOTICE_BATCH",
    "NOTICE_LAG_S",
    "NoticeReport",
    "generic_notice_transition",
    "notice_transition",
    "send_notices",
]

NOTICE_BATCH = 500  # lots per commit.lua call
NOTICE_LAG_S = 60
MAX_ATTEMPTS = 50


@dataclass(slots=True)
class NoticeReport:
    upto: int  # notices due at or before this instant were given
    since: int | None = None  # the expiry scanned from (exclusive); None: nothing to scan
    until: int | None = None  # ... up to (inclusive)
    scanned: int = 0  # expiry index entries read
    lots: int = 0  # lots written
    notices: int = 0
    retried: int = 0  # lots read again because they changed under the run


def _option_data(a: list[Any]) -> dict[str, object]:
    """`transitions.option_data` of a stored option array (same keys, same values)."""
    return {
        "optionId": a[0],
        "rank": a[1],
        "thirdGuid": a[2],
        "partnerGuid": a[3],
        "placedAt": a[4],
        "deadline": a[5],
        "effectiveExpiry": a[6],
        "deadlineSource": "koban" if a[8] else "estimated",
        "prolonged": bool(a[7]),
        "actor": "sweep",
    }


def notice_transition(
    store: LotStore, code: str, raw: bytes, upto: int
) -> tuple[list[Any], int] | None:
    """The notice transition of a stored lot, straight from its JSON (None: nothing owed).

    A notice touches no index, count or configuration: only the option's flag, the lot's
    version, sequence and modification time, and its events. Proved equal to
    `generic_notice_transition` (decode, `transitions.expiring_notices`,
    `LotStore.transition`) by tests/test_notices.py; ~4x cheaper, which matters when a
    tick gives tens of thousands of notices.
    """
    notice = store.rules.expiring_notice
    if notice <= 0:
        return None
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    owed = [
        a
        for a in d.get("o", ())
        if not (len(a) > 11 and a[11]) and a[6] is not None and a[6] - notice <= upto
    ]
    if not owed:
        return None
    owed.sort(key=lambda a: a[1])
    rev, version, sequence = int(raw[:bar]), d["v"] + 1, d["q"]
    stream: list[bytes] = []
    history: list[bytes] = []
    modified = d.get("m", 0)
    for i, a in enumerate(owed, 1):
        if len(a) > 11:
            a[11] = 1
        else:
            a.append(1)
        when = max(a[6] - notice, a[4])
        modified = max(modified, when)
        event = DomainEvent("option.expiring", when, _option_data(a))
        stream.append(store.event(code, event, sequence + i, version))
        history.append(store.history_line(event, sequence + i, version))
    d["v"], d["q"], d["m"] = version, sequence + len(owed), modified
    transition = [
        rev,
        b"%d|" % (rev + 1) + orjson.dumps(d),
        code,
        modified,
        [],
        [],
        [],
        [],
        [],
        [],
        stream,
        history,
    ]
    return transition, len(owed)


def generic_notice_transition(
    store: LotStore, code: str, raw: bytes, upto: int
) -> tuple[list[Any], int] | None:
    """The same through the data model: the reference `notice_transition` is proved
    against."""
    lot = decode_lot(code, raw)
    before = view(lot)
    events = tr.expiring_notices(lot, upto, store.rules)
    if not events:
        return None
    when = max(lot.modified_at, *(e.time for e in events))
    return store.transition(before, lot, events, when), len(events)


async def _decide(
    store: LotStore, codes: Sequence[str], upto: int
) -> tuple[list[list[Any]], list[tuple[str, int]]]:
    raws = await raw_lots(store, list(codes))
    transitions: list[list[Any]] = []
    decided: list[tuple[str, int]] = []
    for code, raw in zip(codes, raws, strict=True):
        found = notice_transition(store, code, raw, upto) if raw is not None else None
        if found is not None:
            transitions.append(found[0])
            decided.append((code, found[1]))
    return transitions, decided


def _settle(applied: Any, decided: list[tuple[str, int]], report: NoticeReport) -> list[str]:
    """Count what landed; the lots whose revision moved meanwhile, to decide again."""
    moved = []
    for (code, count), ok in zip(decided, applied, strict=True):
        if int(ok):
            report.lots += 1
            report.notices += count
        else:
            moved.append(code)
    report.retried += len(moved)
    return moved


async def _notice_lots(
    store: LotStore, codes: Sequence[str], upto: int, report: NoticeReport, batch: int
) -> None:
    """Notice `codes` in batches; each batch's commit runs in Redis while the next one is
    read and decided here. Lots that changed meanwhile are decided again at the end."""
    moved: list[str] = []
    inflight: tuple[asyncio.Task[Any], list[tuple[str, int]]] | None = None
    try:
        for i in range(0, len(codes), batch):
            transitions, decided = await _decide(store, codes[i : i + batch], upto)
            if inflight is not None:
                moved += _settle(await inflight[0], inflight[1], report)
                inflight = None
            if transitions:
                task = asyncio.ensure_future(store.commit(transitions, mode="each"))
                inflight = task, decided
        if inflight is not None:
            moved += _settle(await inflight[0], inflight[1], report)
            inflight = None
    finally:
        if inflight is not None:  # failing: let the last commit land or fail on its own
            await asyncio.gather(inflight[0], return_exceptions=True)
    for _ in range(MAX_ATTEMPTS):
        if not moved:
            return
        transitions, decided = await _decide(store, moved, upto)
        if not transitions:
            return
        moved = _settle(await store.commit(transitions, mode="each"), decided, report)
    raise StoreConflict(f"expiring notices: lots {moved[:5]} keep changing")


async def send_notices(
    store: LotStore, upto: int, *, through: int | None = None, batch: int = NOTICE_BATCH
) -> NoticeReport:
    """Give every expiring notice due at or before `upto` (the tenant's clock); idempotent.

    `through` limits the run to options expiring at or before it: a tick's processing
    gives those first (their notice must precede their expiry) and the window ahead after
    its sweep."""
    report = NoticeReport(upto)
    notice = store.rules.expiring_notice
    if notice <= 0:
        return report
    high = upto + notice if through is None else min(upto + notice, through)
    cursor = await notice_cursor(store)
    low = cursor if cursor is not None else upto
    if high <= low:
        return report
    report.since, report.until = low, high
    while True:
        # One score at a time: every member of it is read at once, so an entry removed by
        # a concurrent sweep cannot make a page skip another.
        score = await next_expiry(store, low, high)
        if score is None:
            break
        scanned, codes = await lots_expiring_at(store, score)
        report.scanned += scanned
        await _notice_lots(store, codes, upto, report, batch)
        low = score
    await raise_notice_cursor(store, high - NOTICE_LAG_S)
    return report
