"""Resolving pending placement intents (an ``Add`` sent, no answer came back).

By Koban's option-placed webhook (`confirm_from_webhook`, or `webhook_resolution` inside
the webhook's own transition), by the scheduler for intents older than ``intent_grace``
(`resolve_pending`: one ``GetLotStatus`` per lot), or by an operator (`resolve_one`). The
judgement is `statecharts.intent_resolution`; docs/sync.md tells the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.koban import KobanClient, KobanError, KobanUnavailable, LotStatus
from service.storage import intents as index
from service.storage.store import Counts, new_id
from service.storage.sync_state import load_lots, mark_needs_sync
from service.tenancy import Tenant
from statecharts import intent_resolution as resolution_rules
from statecharts import transitions as tr
from statecharts.drift import koban_occupancy
from statecharts.errors import ErrorCode, RuleViolation
from statecharts.intent_resolution import Outcome, Resolution, rank_outcome, settle
from statecharts.model import Actor, DomainEvent, Lot, Rules

__all__ = [
    "Outcome",
    "PendingIntent",
    "Resolution",
    "confirm_from_webhook",
    "find_intent_lot",
    "list_pending",
    "resolve_one",
    "resolve_pending",
    "webhook_resolution",
]


@dataclass(frozen=True, slots=True)
class PendingIntent:
    extcode: str
    intent_id: str
    rank: int
    third: str
    partner: str | None
    created_at: int


# --------------------------------------------------------------------------- listing


async def list_pending(tenant: Tenant, older_than: int | None = None) -> list[PendingIntent]:
    """Pending intents, oldest first (only those created at or before `older_than`)."""
    pairs = await index.pending_members(tenant.store, older_than)
    lots = await load_lots(tenant.store, sorted({code for code, _ in pairs}))
    out: list[PendingIntent] = []
    for code, iid in pairs:
        lot = lots.get(code)
        intent = tr.find_intent(lot, iid) if lot is not None else None
        if intent is not None:
            out.append(
                PendingIntent(
                    code, iid, intent.rank, intent.holder, intent.partner, intent.created_at
                )
            )
    return out


async def find_intent_lot(tenant: Tenant, intent_id: str) -> str | None:
    """The extcode of a pending intent, from its id alone (the operator's ``--resolve ID``)."""
    return await index.find_intent_lot(tenant.store, intent_id)


# --------------------------------------------------------------------------- judging


def _judge(status: LotStatus, rank: int) -> Outcome:
    """Is the intent's `rank` occupied in Koban?"""
    occupied = koban_occupancy(status.result, status.max_rank)
    if occupied is None and status.result == -2:
        occupied = status.max_rank  # pre-reserved: trust MaxRank when Koban gives it
    return rank_outcome(occupied, rank)


def _koban_data(status: LotStatus | None) -> dict[str, object] | None:
    if status is None:
        return None
    return {"kobanResult": status.result, "kobanMaxRank": status.max_rank}


async def _apply(
    tenant: Tenant,
    extcode: str,
    intent_id: str,
    outcome: Outcome,
    now: int,
    *,
    actor: Actor = "reconcile",
    status: LotStatus | None = None,
    koban_deadline: int | None = None,
) -> Resolution | None:
    def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Resolution | None]:
        # A placed intent's rank is re-judged on the lot as it is now (ranks compact).
        judged = outcome
        if status is not None and outcome != "dropped":
            intent = tr.find_intent(lot, intent_id)
            if intent is not None:
                judged = _judge(status, intent.rank)
        return settle(
            lot,
            intent_id,
            judged,
            now,
            tenant.rules,
            option_id=new_id(),
            actor=actor,
            koban_deadline=koban_deadline,
            koban=_koban_data(status),
        )

    try:
        resolution = await tenant.store.mutate(extcode, change, now=now)
    except RuleViolation as exc:
        if exc.code is ErrorCode.LOT_UNKNOWN:
            await index.forget_intent(tenant.store, extcode, intent_id)
            return None
        raise
    if resolution is not None and resolution.outcome == "dropped":
        await mark_needs_sync(tenant.store, extcode)
    if status is not None and status.result == -1:
        await mark_needs_sync(tenant.store, extcode)
    return resolution


# --------------------------------------------------------------------------- entry points


async def resolve_pending(tenant: Tenant, koban: KobanClient, now: int) -> list[Resolution]:
    """Resolve every intent older than `intent_grace` (see the module doc); one
    GetLotStatus per lot. Intents Koban could not be asked about and younger than
    `intent_ttl` stay pending (not in the result)."""
    grace = int(tenant.settings.intent_grace.fixed_seconds())
    ttl = int(tenant.settings.intent_ttl.fixed_seconds())
    pending = await list_pending(tenant, older_than=now - grace)
    by_lot: dict[str, list[PendingIntent]] = {}
    for p in pending:
        by_lot.setdefault(p.extcode, []).append(p)
    out: list[Resolution] = []
    for extcode, intents in by_lot.items():
        try:
            status: LotStatus | None = await koban.get_lot_status(extcode)
        except (KobanUnavailable, KobanError):
            status = None
        for p in sorted(intents, key=lambda i: i.rank):
            if status is None:
                if now - p.created_at < ttl:
                    continue
                resolution = await _apply(tenant, extcode, p.intent_id, "dropped", now)
            else:
                resolution = await _apply(
                    tenant, extcode, p.intent_id, "not_placed", now, status=status
                )
            if resolution is not None:
                out.append(resolution)
    return out


async def resolve_one(
    tenant: Tenant,
    koban: KobanClient,
    extcode: str | None,
    intent_id: str,
    now: int,
) -> Resolution:
    """Resolve one intent now by asking Koban (the operator's command; no grace period).

    `extcode` may be None: the intent is looked up by id. Raises ``OPTION_NOT_FOUND`` when
    no such intent is pending; Koban's errors propagate (nothing is dropped by hand).
    """
    code = extcode if extcode is not None else await find_intent_lot(tenant, intent_id)
    if code is None:
        raise RuleViolation(ErrorCode.OPTION_NOT_FOUND, f"no pending intent {intent_id}")
    status = await koban.get_lot_status(code)
    resolution = await _apply(tenant, code, intent_id, "not_placed", now, status=status)
    if resolution is None:
        raise RuleViolation(ErrorCode.OPTION_NOT_FOUND, f"no pending intent {intent_id}")
    return resolution


def webhook_resolution(
    lot: Lot,
    third: str,
    exp_date: int | None,
    now: int,
    rules: Rules,
) -> tuple[list[DomainEvent], Resolution] | None:
    """`statecharts.intent_resolution.webhook_resolution` with a fresh option id."""
    return resolution_rules.webhook_resolution(lot, third, exp_date, now, rules, option_id=new_id())


async def confirm_from_webhook(
    tenant: Tenant, extcode: str, third: str, exp_date: int | None, now: int
) -> Resolution | None:
    """Koban's option-placed webhook for (lot, third) with a pending intent: the intent
    becomes the option in one transition. None when no intent of that third is pending
    (nothing written)."""

    def change(lot: Lot, _counts: Counts) -> tuple[list[DomainEvent], Resolution | None]:
        found = webhook_resolution(lot, third, exp_date, now, tenant.rules)
        return found if found is not None else ([], None)

    try:
        return await tenant.store.mutate(extcode, change, now=now)
    except RuleViolation as exc:
        if exc.code is ErrorCode.LOT_UNKNOWN:
            return None
        raise
