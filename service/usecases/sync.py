"""Stock sync (``ncDeal/GetUpdated``) and reconciliation (``ncOption/GetLotStatus``).

Koban is the authority on a lot's status. :func:`sync_stock` mirrors every status Koban
reports changed since the last run (unknown lots imported, OPTION without a count as an
opaque placeholder); :func:`reconcile` re-reads queued and sampled lots one by one and
fixes their option count and rank 1's deadline through the chart. Disagreements are drift
events in the same transition. :func:`record_drift` and :func:`mark_needs_sync` are shared
with the flows and intents. docs/sync.md tells the rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import structlog

from service.koban import DealPage, KobanClient, KobanError, KobanLot, KobanUnavailable, LotStatus
from service.storage import sync_state
from service.storage.store import Counts
from service.tenancy import Tenant
from service.usecases.programmes import refresh_programmes
from statecharts import drift
from statecharts import transitions as tr
from statecharts.drift import drift_event as drift_event  # re-exported: a shared helper
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.model import STATUS_OF_CONFIG, Actor, DomainEvent, Lot
from statecharts.reconcile import (
    OPTIONED,
    LotOutcome,
    Verdict,
    mirror_status,
    reconcile_change,
)

Progress = Callable[[int, int], None]
log = structlog.get_logger("service.sync")


# Koban's standard statuses → the chart's target configuration (OPTION is refined by count).
_TARGET_OF_STATUS: dict[str, str] = {
    "LIBRE": "free",
    "OPTION": "one_option",
    "PRERESV": "prereserved",
    "RESV": "reserved",
    "BLOQUE": "blocked",
}


# --------------------------------------------------------------------------- shared helpers


def last_sync_key(tenant: Tenant) -> str:
    """String: start time (UNIX s) of the last successful stock sync."""
    return tenant.store.keys.last_sync


async def mark_needs_sync(tenant: Tenant, *extcodes: str) -> None:
    """Queue lots for the reconciler."""
    await sync_state.mark_needs_sync(tenant.store, *extcodes)


async def needs_sync(tenant: Tenant) -> set[str]:
    return await sync_state.needs_sync(tenant.store)


async def record_drift(
    tenant: Tenant, extcode: str, now: int, actor: Actor, reason: str, **data: object
) -> None:
    """A drift event on the lot (its own transition) and the lot queued for reconciliation."""

    def change(_lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], None]:
        return [drift_event(now, actor, reason, **data)], None

    try:
        await tenant.store.mutate(extcode, change, now=now)
    except RuleViolation as exc:
        if exc.code is not ErrorCode.LOT_UNKNOWN:
            raise
        return
    await mark_needs_sync(tenant, extcode)


def koban_occupancy(status: LotStatus) -> int | None:
    """How many options Koban's GetLotStatus reports (`statecharts.drift.koban_occupancy`)."""
    return drift.koban_occupancy(status.result, status.max_rank)


def in_drift_tolerance(tenant: Tenant, now: int) -> bool:
    """True within the tenant's `drift_tolerance` after the latest tick."""
    return drift.in_drift_tolerance(now, tenant.settings.drift_tolerance.fixed_seconds())


# --------------------------------------------------------------------------- stock sync


@dataclass(slots=True)
class SyncReport:
    since: int
    started: int
    full: bool
    pages: int = 0
    seen: int = 0
    imported: int = 0
    changed: int = 0
    unchanged: int = 0
    drift: int = 0
    deferred: int = 0
    lots: list[str] = field(default_factory=list)  # extcodes transferred, in order
    skipped: dict[str, int] = field(default_factory=dict)  # reason → deals not mirrored

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def target_of(kl: KobanLot) -> tuple[str, str]:
    """The chart configuration and status label a Koban lot maps to.

    ``Result: WON`` → sold (whatever Status says); LIBRE/OPTION/PRERESV/RESV/BLOQUE → their
    configuration (OPTION as one option: the count is read by reconciliation); anything
    else → custom, its label kept verbatim.
    """
    if kl.won:
        return "sold", STATUS_OF_CONFIG["sold"]
    if not kl.custom and kl.status in _TARGET_OF_STATUS:
        return _TARGET_OF_STATUS[kl.status], kl.status
    return "custom", kl.status


def _new_lot(kl: KobanLot) -> Lot:
    return Lot(
        kl.extcode,
        program=kl.program_code,
        label=kl.label,
        guid=kl.guid,
        secondary=kl.secondary,
        link=kl.link,
    )


def _import_events(lot: Lot, kl: KobanLot, now: int, tenant: Tenant) -> list[DomainEvent]:
    target, label = target_of(kl)
    events: list[DomainEvent] = []
    if target != "free":
        events = [
            e
            for e in tr.sync_status(lot, target, label, now, tenant.rules, "sync")
            if e.type != "lot.status_changed"  # the import event carries the status
        ]
    data: dict[str, object] = {
        "program": kl.program_code,
        "label": kl.label,
        "status": lot.status,
        "actor": "sync",
    }
    if kl.secondary:
        data["link"] = kl.link
    return [DomainEvent("lot.imported", now, data), *events]


def _mirror(
    lot: Lot, kl: KobanLot, now: int, started: int, tenant: Tenant
) -> tuple[list[DomainEvent], LotOutcome]:
    """The change fn of one lot of a GetUpdated page (the lot as of `now`)."""
    if lot.version == 0:
        events = _import_events(lot, kl, now, tenant)
        return events, LotOutcome("imported", queue=lot.config in OPTIONED)
    target, label = target_of(kl)
    return mirror_status(
        lot, target, label, now, started, tenant.rules, in_drift_tolerance(tenant, now)
    )


async def sync_lot(tenant: Tenant, kl: KobanLot, now: int, started: int | None = None) -> str:
    """Mirror one Koban lot (import or status); returns imported|changed|unchanged|deferred."""
    started = now if started is None else started

    def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], LotOutcome]:
        return _mirror(lot, kl, now, started, tenant)

    outcome = await tenant.store.mutate(kl.extcode, change, now=now, create=lambda: _new_lot(kl))
    if outcome.queue:
        await mark_needs_sync(tenant, kl.extcode)
    return outcome.kind + ("+drift" if outcome.drift else "")


async def sync_stock(
    tenant: Tenant,
    koban: KobanClient,
    now: int,
    full: bool = False,
    progress: Progress | None = None,
    *,
    page_size: int = 200,
    overlap: int = 0,
) -> SyncReport:
    """One stock sync from Koban (§6); see the module doc.

    `now` is this run's start: stored as ``lastsync`` only once every page went through,
    so a failed run is repeated from the same point. `overlap` (seconds) widens the window
    backwards to absorb clock skew with Koban (re-reading a lot is harmless).
    `progress(done, total)` is called after each lot.
    """
    # One GetAll a run: the programme listing, and without `programmes` the tenant's deals.
    processes = await refresh_programmes(tenant, koban)
    last = await sync_state.last_sync(tenant.store)
    since = 0 if full or last is None else max(0, last - overlap)
    report = SyncReport(since=since, started=now, full=full)
    done = 0
    programmes = tenant.settings.programmes
    if programmes:
        # Only the tenant's programmes, each read on its own (GetUpdatedProcess).
        wanted = set(programmes)
        for code in programmes:
            pages = koban.get_updated(since, page_size=page_size, process_code=code)
            done = await _sync_pages(tenant, pages, wanted, now, report, progress, done)
    else:
        wanted = processes
        pages = koban.get_updated(since, page_size=page_size)
        await _sync_pages(tenant, pages, wanted, now, report, progress, done)
    await sync_state.set_last_sync(tenant.store, now)
    return report


async def _sync_pages(
    tenant: Tenant,
    pages: AsyncIterator[DealPage],
    wanted: set[str],
    now: int,
    report: SyncReport,
    progress: Progress | None,
    done: int,
) -> int:
    """Mirror the lots of `pages` whose programme is `wanted`; odd deals are counted."""
    async for page in pages:
        report.pages += 1
        for skipped in page.skipped:
            report.skip(skipped.reason)
            log.info(
                "sync_deal_skipped", tenant=tenant.name, reason=skipped.reason, deal=skipped.ref
            )
        for kl in page.items:
            if kl.program_code not in wanted:
                report.skip("other_process")
                log.info(
                    "sync_deal_skipped", tenant=tenant.name, reason="other_process", deal=kl.extcode
                )
                continue
            kind = await sync_lot(tenant, kl, now, now)
            report.seen += 1
            report.lots.append(kl.extcode)
            base, _, drift = kind.partition("+")
            setattr(report, base, getattr(report, base) + 1)
            report.drift += bool(drift)
            done += 1
            if progress is not None:
                progress(done, max(page.length, done))
    return done


# --------------------------------------------------------------------------- reconciliation


@dataclass(slots=True)
class ReconcileReport:
    checked: int = 0
    agreed: int = 0
    fixed: int = 0
    deferred: int = 0
    drift: int = 0
    failed: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)


async def reconcile_lot(
    tenant: Tenant,
    koban: KobanClient,
    extcode: str,
    now: int,
    status: LotStatus | None = None,
) -> str:
    """Check one lot against GetLotStatus and fix it; the outcome name.

    ``agreed`` / ``fixed`` / ``drift`` (recorded, not fixable here) / ``deferred`` (changed
    since Koban was asked, a placement or another Koban write of ours in flight, or within
    drift tolerance: stays queued) /
    ``unknown_lot`` (Koban does not know it) / ``missing`` (not a local lot).
    The lot leaves the queue unless deferred or still holding opaque placeholders.
    """
    store = tenant.store
    if await store.load(extcode) is None:
        await sync_state.unmark_needs_sync(store, extcode)
        return "missing"
    if status is None:
        status = await koban.get_lot_status(extcode)
    seen = status
    if await sync_state.lot_write_in_flight(store, extcode):
        # A Prolong/Undo/Preresv/Desist of ours is in flight: Koban's answer may predate it.
        await mark_needs_sync(tenant, extcode)
        return "deferred"

    def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], tuple[Verdict, bool]]:
        tolerant = in_drift_tolerance(tenant, now)
        events, verdict = reconcile_change(
            lot, seen.result, seen.max_rank, seen.end_date, now, tenant.rules, tolerant
        )
        return events, (verdict, any(o.opaque for o in lot.options))

    verdict, opaque = await store.mutate(extcode, change, now=now)
    if verdict.keep_queued or opaque:
        await mark_needs_sync(tenant, extcode)
    else:
        await sync_state.unmark_needs_sync(store, extcode)
    return verdict.outcome


async def _candidates(tenant: Tenant, limit: int) -> list[str]:
    """Queued lots (opaque ones first), then a random sample of lots holding options."""
    store = tenant.store
    queued = await sync_state.queued_sample(store, limit * 4)
    lots = await sync_state.load_lots(store, queued)
    ranked = [
        (not (code in lots and any(o.opaque for o in lots[code].options)), code) for code in queued
    ]
    ordered = [code for _, code in sorted(ranked, key=lambda x: x[0])][:limit]
    if len(ordered) < limit:
        for code in await sync_state.expiring_sample(store, limit * 2):
            if code not in ordered:
                ordered.append(code)
            if len(ordered) >= limit:
                break
    return ordered


async def reconcile(
    tenant: Tenant,
    koban: KobanClient,
    now: int,
    limit: int = 50,
    extcodes: Iterable[str] | None = None,
) -> ReconcileReport:
    """One reconciliation pass over at most `limit` lots (or the given `extcodes`).

    Koban being unavailable ends the pass early (what is queued stays queued).
    """
    report = ReconcileReport()
    codes = list(extcodes) if extcodes is not None else await _candidates(tenant, limit)
    for code in codes:
        try:
            outcome = await reconcile_lot(tenant, koban, code, now)
        except KobanUnavailable:
            report.failed += 1
            break
        except KobanError:
            report.failed += 1
            continue
        report.checked += 1
        report.outcomes[code] = outcome
        if outcome == "fixed":
            report.fixed += 1
            report.drift += 1
        elif outcome in ("drift", "unknown_lot"):
            report.drift += 1
        elif outcome == "deferred":
            report.deferred += 1
        elif outcome == "agreed":
            report.agreed += 1
    return report
