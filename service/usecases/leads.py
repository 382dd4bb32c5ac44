"""A lead Koban sends (its lead webhook): kept for ``GET …/leads/{id}`` and announced as
``koban.lead.received`` with guids and codes only; the same form again within
``lead_dedup`` is one event."""

from __future__ import annotations

import math
from typing import Any

from service.koban.lead_form import LeadForm
from service.storage.leads import LeadRecords
from service.storage.non_lot_events import NonLotEvent
from service.tenancy import Tenant
from statecharts.ticks import IsoDuration, to_iso

__all__ = ["lead", "receive_lead"]


def _ms(duration: IsoDuration) -> int:
    return max(1, math.ceil(duration.fixed_seconds() * 1000))


async def receive_lead(tenant: Tenant, form: LeadForm) -> str | None:
    """→ the event's id, or None for a repeat within the dedup window."""
    now = tenant.clock.now()
    contact = {**form.contact(), "receivedAt": to_iso(now)}
    data = {**form.summary(), "actor": "koban"}
    event = NonLotEvent("lead.received", "lead", form.guid, now, data)
    settings = tenant.settings
    return await LeadRecords(tenant.store).receive(
        form.guid,
        form.digest,
        contact,
        event,
        retention_ms=_ms(settings.lead_retention),
        dedup_ms=_ms(settings.lead_dedup),
    )


async def lead(tenant: Tenant, guid: str) -> dict[str, Any] | None:
    return await LeadRecords(tenant.store).get(guid)
