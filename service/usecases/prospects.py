"""Prospects and CGPs made in Koban (``ncThird/PostOne``), and the extcode they go by.

`post_third` is the one place that calls the Koban client's PostOne: the account shape
Koban publishes lives in the client, this adapter only hands it the contact. Every third
the service makes carries an ``Extcode`` (the caller's, or one derived from the request's
Idempotency-Key), so a resend upserts the same third instead of making a second one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from service.koban import KobanClient, wire
from service.koban.denonciation import Contact
from service.koban.wire import ThirdKind
from service.storage.non_lot_events import NonLotEvent, append_non_lot_event
from service.tenancy import Tenant

__all__ = [
    "EXTCODE_PREFIX",
    "MadeThird",
    "make_third",
    "post_third",
    "prospect_created",
    "service_extcode",
]

EXTCODE_PREFIX = "kop-"


def service_extcode(scope: str | None) -> str:
    """An extcode of ours: stable for a request scope (so retries name the same third),
    random without one."""
    return EXTCODE_PREFIX + (scope[:32] if scope else uuid.uuid4().hex)


async def post_third(
    koban: KobanClient,
    contact: Contact,
    *,
    kind: ThirdKind,
    extcode: str,
    programme: str | None = None,
    origin: str | None = None,
    status_code: str | None = None,
) -> str:
    """PostOne in Koban's account structure (``?uniqueproperty=Extcode``) → the third's
    guid. The programme is not part of the account: a dénonciation names it to Create.
    `status_code` overrides the kind's usual one (a tenant's ``cgp_status_code``)."""
    del programme
    account = wire.account(
        contact.last_name,
        contact.first_name,
        contact.email,
        contact.phone,
        kind,
        cell=contact.mobile,
        extcode=extcode,
        origin_code=origin,
        status_code=status_code,
    )
    return await koban.post_account(account)


@dataclass(frozen=True, slots=True)
class MadeThird:
    guid: str
    extcode: str


def prospect_created(
    guid: str, extcode: str, kind: ThirdKind, now: int, partner: str | None
) -> NonLotEvent:
    """``koban.prospect.created``: guids and codes only, never the contact."""
    data = {
        "thirdGuid": guid,
        "extcode": extcode,
        "kind": kind,
        "partnerGuid": partner,
        "actor": "api",
    }
    return NonLotEvent("prospect.created", "prospect", guid, now, data)


async def make_third(
    tenant: Tenant,
    koban: KobanClient,
    contact: Contact,
    *,
    kind: ThirdKind,
    extcode: str,
    programme: str | None,
    origin: str | None,
    partner: str | None,
) -> MadeThird:
    """PostOne, then its event (``koban.prospect.created`` also for a CGP, ``kind`` says)."""
    guid = await post_third(
        koban,
        contact,
        kind=kind,
        extcode=extcode,
        programme=programme,
        origin=origin,
        status_code=tenant.settings.cgp_status_code if kind == "CGP" else None,
    )
    event = prospect_created(guid, extcode, kind, tenant.clock.now(), partner)
    await append_non_lot_event(tenant.store, event)
    return MadeThird(guid, extcode)
