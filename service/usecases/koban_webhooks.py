"""Applying one of Koban's webhooks to a lot: read, decide, commit.

Each webhook is one `LotStore.mutate` step, so the lot, its events, indexes and tombstones
move together; what the rule reads besides the lot (the third's tombstones, the tail of
the lot's history) is read through mutate's `prefetch`, consistent with the lot. The
rules are `statecharts.webhook_rules`; the HTTP half is `service.entrypoints.koban_webhooks`;
docs/webhooks.md tells the whole story.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service.koban.webhook_forms import (
    OptionCancelledForm,
    OptionExpiredForm,
    OptionPlacedForm,
    OptionProlongedForm,
    ReservationValidatedForm,
    ReservationWithdrawnForm,
    WebhookForm,
)
from service.storage.history import already_recorded, recent_events
from service.storage.store import Counts, new_id
from service.storage.sync_state import lot_exists, mark_needs_sync
from service.storage.tombstones import tombstones_of
from service.tenancy import Tenant
from service.usecases.echoes import wall_now
from statecharts import webhook_rules as rules
from statecharts.drift import DRIFT
from statecharts.model import DomainEvent, Lot
from statecharts.webhook_rules import Applied, Ctx, NeedTombstones, Seen, Step, Tombstone

__all__ = ["WEBHOOKS", "Outcome", "Webhook", "apply_webhook"]


F = TypeVar("F", bound=WebhookForm)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one webhook did (logged; the reply is only ``{"success": true}``)."""

    outcome: str
    created: bool
    drift: bool
    events: int
    resync: bool = False


@dataclass(frozen=True, slots=True)
class Webhook(Generic[F]):
    """One POST webhook: the form it reads and the rule step it runs."""

    form: type[F]
    step: Callable[[F, Ctx], Step]
    tombstones: bool = False  # whether the step always reads the third's tombstones


def _placed(f: OptionPlacedForm, ctx: Ctx) -> Step:
    return rules.option_placed(ctx, f.third_guid, f.exp_date, f.rank)


def _cancelled(f: OptionCancelledForm, ctx: Ctx) -> Step:
    return rules.option_cancelled(ctx, f.third_guid)


def _prolonged(f: OptionProlongedForm, ctx: Ctx) -> Step:
    return rules.option_prolonged(ctx, f.third_guid, f.prg_date, f.exp_date)


def _expired(f: OptionExpiredForm, ctx: Ctx) -> Step:
    return rules.option_expired(ctx, f.third_guid)


def _validated(f: ReservationValidatedForm, ctx: Ctx) -> Step:
    return rules.reservation_validated(ctx, f.third_guid, f.prereservation_guid)


def _withdrawn(f: ReservationWithdrawnForm, ctx: Ctx) -> Step:
    return rules.reservation_withdrawn(ctx)


WEBHOOKS: dict[str, Webhook[Any]] = {
    "option-placed": Webhook(OptionPlacedForm, _placed, tombstones=True),
    "option-cancelled": Webhook(OptionCancelledForm, _cancelled),
    "option-prolonged": Webhook(OptionProlongedForm, _prolonged),
    "option-expired": Webhook(OptionExpiredForm, _expired),  # tombstones on demand
    "reservation-validated": Webhook(ReservationValidatedForm, _validated),
    "reservation-withdrawn": Webhook(ReservationWithdrawnForm, _withdrawn),
}


def _third_of(form: WebhookForm) -> str | None:
    third = getattr(form, "third_guid", None)
    return third if isinstance(third, str) else None


def _imported(lot: Lot, now: int, webhook: str) -> DomainEvent:
    data: dict[str, object] = {
        "program": None,
        "label": None,
        "status": lot.status,
        "actor": "koban",
        "pendingSync": True,
        "webhook": webhook,
    }
    return DomainEvent("lot.imported", now, data)


async def apply_webhook(tenant: Tenant, name: str, form: WebhookForm) -> Outcome:
    """Apply webhook `name` (a key of `WEBHOOKS`) with its validated `form` to the lot.

    Raises what the store raises (`StoreConflict`, Redis errors): nothing is written then.
    """
    webhook = WEBHOOKS[name]
    store = tenant.store
    extcode, guid, third = form.extcode, form.lot_guid, _third_of(form)
    now = tenant.clock.now()
    ctx = Ctx(name, now, tenant.rules, wall_now(), new_id)
    step = webhook.step(form, ctx)
    since = now - int(tenant.settings.tombstone_ttl.fixed_seconds())

    if not await lot_exists(store, extcode):
        # Marked before it is created: a crash in between leaves a mark, never a lot
        # that nobody will sync.
        await mark_needs_sync(store, extcode)

    with_tombstones = webhook.tombstones

    async def prefetch() -> Seen:
        recent = await recent_events(store, extcode)
        tombs: list[Tombstone] = []
        if with_tombstones and third is not None:
            tombs = await tombstones_of(store, extcode, third, since)
        return Seen(tuple(tombs), recent, with_tombstones)

    def create() -> Lot:
        return Lot(extcode, guid=guid)

    def change(lot: Lot, counts: Counts) -> tuple[list[DomainEvent], Outcome]:
        seen = counts.extra if isinstance(counts.extra, Seen) else Seen()
        created = lot.rev == 0 and lot.version == 0
        events = [_imported(lot, now, name)] if created else []
        applied = rules.decide_webhook(step, lot, seen, ctx, third)
        if (
            applied.drift
            and all(e.type == DRIFT for e in applied.events)
            and all(already_recorded(seen.recent, e) for e in applied.events)
        ):
            applied = Applied([], "replay: drift already recorded")  # replays stay no-ops
        events.extend(applied.events)
        outcome = Outcome(applied.outcome, created, applied.drift, len(events), applied.resync)
        return events, outcome

    try:
        outcome = await store.mutate(extcode, change, now=now, create=create, prefetch=prefetch)
    except NeedTombstones:  # nothing was written: decide again, tombstones read
        with_tombstones = True
        outcome = await store.mutate(extcode, change, now=now, create=create, prefetch=prefetch)
    if outcome.drift or outcome.resync:
        await mark_needs_sync(store, extcode)
    return outcome
