"""Expiring notices: ``option.expiring``, `expiring_notice` (a tenant setting) before an
option's expiry tick, once per option (the option is marked `noticed`; the lot's version
is bumped). The data change is `statecharts.transitions.expiring_notices` (pure).

A per-tenant cursor (`TenantKeys.notice_cursor`, only moves forward) holds the highest
expiry already scanned: a run up to `u` reads the expiry index over ``(cursor, u +
notice]``, decides those lots on their stored JSON (`notice_transition`), commits them in
batches through ``commit.lua`` (revision-guarded: a lot that changed is decided again),
then raises the cursor, `NOTICE_LAG_S` behind, so a transition decided just before `u`
and committed after the read is not missed. Options placed or moved behind the cursor get
their notice from the transition that put them there (`LotStore.mutate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.storage.codec import (
    OPT_DEADLINE,
    OPT_EXPIRY,
    OPT_HOLDER,
    OPT_ID,
    OPT_KOBAN_SOURCE,
    OPT_NOTICED,
    OPT_PARTNER,
    OPT_PLACED_AT,
    OPT_PROLONGED,
    OPT_RANK,
    decode_lot,
    is_noticed,
)
from service.storage.commit_script import Transition
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
        "optionId": a[OPT_ID],
        "rank": a[OPT_RANK],
        "thirdGuid": a[OPT_HOLDER],
        "partnerGuid": a[OPT_PARTNER],
        "placedAt": a[OPT_PLACED_AT],
        "deadline": a[OPT_DEADLINE],
        "effectiveExpiry": a[OPT_EXPIRY],
        "deadlineSource": "koban" if a[OPT_KOBAN_SOURCE] else "estimated",
        "prolonged": bool(a[OPT_PROLONGED]),
        "actor": "sweep",
    }


def notice_transition(
    store: LotStore, code: str, raw: bytes, upto: int
) -> tuple[Transition, int] | None:
    """The notice transition of a stored lot, straight from its JSON (None: nothing owed).

    A notice touches no index, count or configuration: only the option's flag, the lot's
    version, sequence and modification time, and its events. Proved equal to
    `generic_notice_transition` (decode, `transitions.expiring_notices`,
    `LotStore.transition`) by tests/integration/test_notices.py; several times cheaper,
    which matters when a tick gives tens of thousands of notices.
    """
    notice = store.rules.expiring_notice
    if notice <= 0:
        return None
    bar = raw.index(b"|")
    d = orjson.loads(raw[bar + 1 :])
    owed = [
        a
        for a in d.get("o", ())
        if not is_noticed(a) and a[OPT_EXPIRY] is not None and a[OPT_EXPIRY] - notice <= upto
    ]
    if not owed:
        return None
    owed.sort(key=lambda a: a[OPT_RANK])
    rev, version, sequence = int(raw[:bar]), d["v"] + 1, d["q"]
    stream: list[bytes] = []
    history: list[bytes] = []
    modified = d.get("m", 0)
    for i, a in enumerate(owed, 1):
        if len(a) > OPT_NOTICED:
            a[OPT_NOTICED] = 1
        else:  # an array written before the slot existed: OPT_NOTICED is the next one
            a.append(1)
        when = max(a[OPT_EXPIRY] - notice, a[OPT_PLACED_AT])
        modified = max(modified, when)
        event = DomainEvent("option.expiring", when, _option_data(a))
        stream.append(store.event(code, event, sequence + i, version))
        history.append(store.history_line(event, sequence + i, version))
    d["v"], d["q"], d["m"] = version, sequence + len(owed), modified
    value = b"%d|" % (rev + 1) + orjson.dumps(d)
    transition = Transition(rev, value, code, modified, [], [], [], [], [], [], stream, history)
    return transition, len(owed)


def generic_notice_transition(
    store: LotStore, code: str, raw: bytes, upto: int
) -> tuple[Transition, int] | None:
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
) -> tuple[list[Transition], list[tuple[str, int]]]:
    raws = await raw_lots(store, list(codes))
    transitions: list[Transition] = []
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
    its sweep. With no cursor yet (a fresh install) the first run starts at `upto`:
    options expiring at or before the first run's instant get no notice."""
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
