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
then raises the cursor. Options that appear later with an expiry the cursor has passed
(placed, placed by webhook, promoted with a restarted clock, prolonged into the window, a
deadline learned from Koban) get their notice from the transition that put them there
(`LotStore.mutate` and the transitions check ``expiry − notice ≤ now``).

The cursor is left `NOTICE_LAG_S` behind ``u + notice``: a transition decided just before
`u` (its ``now`` a moment earlier) and committed after this run read the index would
otherwise fall between the two checks; the next run reads that stretch again (lots whose
options are all noticed are skipped without being decoded).

With no cursor yet (a fresh install) the first run starts at `u`: notices due before the
service ever ran are not sent for options already due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from service.codec import decode_lot
from service.monotonic import raise_to, read_int
from service.store import LotStore, StoreConflict, view
from statecharts import transitions as tr

__all__ = ["NOTICE_BATCH", "NOTICE_LAG_S", "NoticeReport", "send_notices"]

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


def _may_owe(raw: bytes, notice: int, upto: int) -> bool:
    """Whether a stored lot may hold an option owing a notice, without decoding it."""
    d = orjson.loads(raw[raw.index(b"|") + 1 :])
    for a in d.get("o", ()):
        noticed = len(a) > 11 and a[11]
        if not noticed and a[6] is not None and a[6] - notice <= upto:
            return True
    return False


async def _notice_lots(
    store: LotStore, codes: Sequence[str], upto: int, report: NoticeReport
) -> None:
    notice = store.rules.expiring_notice
    pending = list(codes)
    for _ in range(MAX_ATTEMPTS):
        raws = cast(
            list[bytes | None], await store.redis.mget([store.keys.lot(c) for c in pending])
        )
        transitions: list[list[Any]] = []
        decided: list[tuple[str, int]] = []
        for code, raw in zip(pending, raws, strict=True):
            if raw is None or not _may_owe(raw, notice, upto):
                continue
            lot = decode_lot(code, raw)
            before = view(lot)
            events = tr.expiring_notices(lot, upto, store.rules)
            if not events:
                continue
            when = max(lot.modified_at, *(e.time for e in events))
            transitions.append(store.transition(before, lot, events, when))
            decided.append((code, len(events)))
        if not transitions:
            return
        applied = await store.commit(transitions, mode="each")
        retry = []
        for (code, count), ok in zip(decided, applied, strict=True):
            if int(ok):
                report.lots += 1
                report.notices += count
            else:
                retry.append(code)
        if not retry:
            return
        report.retried += len(retry)
        pending = retry
    raise StoreConflict(f"expiring notices: lots {pending[:5]} keep changing")


async def send_notices(store: LotStore, upto: int, *, batch: int = NOTICE_BATCH) -> NoticeReport:
    """Give every expiring notice due at or before `upto` (the tenant's clock); idempotent."""
    report = NoticeReport(upto)
    notice = store.rules.expiring_notice
    if notice <= 0:
        return report
    redis = store.redis
    keys = store.keys
    high = upto + notice
    cursor = await read_int(redis, keys.notice_cursor)
    low = cursor if cursor is not None else upto
    if high <= low:
        return report
    report.since, report.until = low, high
    while True:
        # One score at a time: every member of it is read at once, so an entry removed by
        # a concurrent sweep cannot make a page skip another.
        first = await redis.zrangebyscore(
            keys.expiries, f"({low}", high, start=0, num=1, withscores=True
        )
        if not first:
            break
        score = int(first[0][1])
        members = cast(list[bytes], await redis.zrangebyscore(keys.expiries, score, score))
        report.scanned += len(members)
        codes = list(dict.fromkeys(m.rsplit(b"/", 1)[0].decode() for m in members))
        for i in range(0, len(codes), batch):
            await _notice_lots(store, codes[i : i + batch], upto, report)
        low = score
    await raise_to(redis, keys.notice_cursor, high - NOTICE_LAG_S)
    return report
