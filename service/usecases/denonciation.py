"""Denounce a prospect on a programme: CheckDenonc → PostOne unless Koban knows the
prospect (then, with an e-mail, a lookup of its guid) → ncDenonc/Create ``By`` the CGP.

Under an Idempotency-Key each step is recorded before the next one starts (checked, the
prospect made or found with its guid, Create sent), so a retry after any failure resumes
where the first attempt stopped: the prospect is re-posted under the same extcode (an
upsert), and a Create that may have been sent is followed by a new check, where
``IsDenonced`` means our own Create went through. The lookup (a guessed Koban method) only
names the prospect: its failure leaves ``thirdGuid`` null and the dénonciation goes on.
Events and log lines carry guids and codes, never the contact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from service.koban import KobanClient, KobanError, KobanUnavailable
from service.koban.denonciation import Contact, DenonciationCheck
from service.storage.denonciations import DenonciationProgress
from service.storage.non_lot_events import NonLotEvent
from service.tenancy import Tenant
from service.usecases.prospects import post_third, prospect_created, service_extcode

__all__ = [
    "ALREADY_DENOUNCED",
    "KOBAN_REFUSED",
    "MODULE_DISABLED",
    "Denonciation",
    "DenonciationImpossible",
    "DenonciationRequest",
    "denounce",
    "refusal_reason",
]

log = structlog.get_logger("service.usecases.denonciation")

MODULE_DISABLED = "MODULE_DISABLED"
ALREADY_DENOUNCED = "ALREADY_DENOUNCED"
KOBAN_REFUSED = "KOBAN_REFUSED"  # Create answered success=false after a passing check


class DenonciationImpossible(Exception):
    """Koban will not take this dénonciation; `reason` is one of the constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class DenonciationRequest:
    programme: str
    contact: Contact
    extcode: str | None
    by: str | None
    partner: str | None


@dataclass(frozen=True, slots=True)
class Denonciation:
    third_guid: str | None
    programme: str
    created_prospect: bool
    by: str | None


def refusal_reason(check: DenonciationCheck) -> str | None:
    """Why the check says no (None: possible)."""
    if not check.activated:
        return MODULE_DISABLED
    if check.is_denounced:
        return ALREADY_DENOUNCED
    return None


def _refuse(reason: str, programme: str) -> DenonciationImpossible:
    if reason == MODULE_DISABLED:
        text = f"The dénonciation module is not activated for programme {programme!r}."
    elif reason == ALREADY_DENOUNCED:
        text = f"This prospect is already denounced on programme {programme!r}."
    else:
        text = f"Koban refused the dénonciation on programme {programme!r}."
    return DenonciationImpossible(reason, f"{reason}: {text}")


def _created_event(req: DenonciationRequest, progress: dict[str, Any], now: int) -> NonLotEvent:
    guid = progress.get("thirdGuid")
    ident = f"{req.programme}:{guid or progress['extcode']}"
    data = {
        "thirdGuid": guid,
        "extcode": progress["extcode"],
        "programme": req.programme,
        "by": req.by,
        "createdProspect": bool(progress.get("createdProspect")),
        "partnerGuid": req.partner,
        "actor": "api",
    }
    return NonLotEvent("denonciation.created", "denonciation", ident, now, data)


async def denounce(
    tenant: Tenant, koban: KobanClient, req: DenonciationRequest, scope: str | None
) -> Denonciation:
    """Run (or resume, under `scope`) the dénonciation. Raises `DenonciationImpossible`
    on a refusal and the client's exceptions on a failure (the progress made is kept)."""
    records = DenonciationProgress(tenant.store)
    progress = await records.get(scope) if scope is not None else {}

    async def save() -> None:
        if scope is not None:
            await records.save(scope, progress)

    if not progress.get("checked"):
        check = await koban.check_denonciation(req.programme, req.contact)
        reason = refusal_reason(check)
        if reason is not None:
            raise _refuse(reason, req.programme)
        progress.update(
            checked=True, exists=check.exists, extcode=req.extcode or service_extcode(scope)
        )
        await save()

    if progress["exists"] and progress.get("thirdGuid") is None:
        found = await _look_up(tenant, koban, req)
        if found is not None:
            progress["thirdGuid"] = found
            await save()

    if not progress["exists"] and progress.get("thirdGuid") is None:
        guid = await post_third(
            koban,
            req.contact,
            kind="PROSPECT",
            extcode=progress["extcode"],
            programme=req.programme,
        )
        progress.update(thirdGuid=guid, createdProspect=True)
        made = prospect_created(
            guid, progress["extcode"], "PROSPECT", tenant.clock.now(), req.partner
        )
        await records.save_with_event(scope, progress, made)

    if progress.get("createSent"):
        # Our Create may have gone through before its answer was lost: ask again.
        check = await koban.check_denonciation(req.programme, req.contact)
        if check.is_denounced:
            return await _done(tenant, records, req, progress, scope)
        reason = refusal_reason(check)
        if reason is not None:
            raise _refuse(reason, req.programme)

    progress["createSent"] = True
    await save()
    answer = await koban.create_denonciation(req.programme, req.contact, req.by)
    if not answer.success:
        progress["createSent"] = False  # a refusal made nothing: a retry may try again
        await save()
        raise _refuse(KOBAN_REFUSED, req.programme)
    return await _done(tenant, records, req, progress, scope)


async def _look_up(tenant: Tenant, koban: KobanClient, req: DenonciationRequest) -> str | None:
    """The guid of the prospect Koban said exists, found by its e-mail; None without an
    e-mail, with the tenant's ``prospect_lookup`` off, or on any failure (logged by its
    kind: an exception's text may quote Koban's answer, hence the e-mail)."""
    email = req.contact.email
    if email is None or tenant.settings.prospect_lookup == "off":
        return None
    status: int | None = None
    try:
        guid = await koban.find_third_by_email(email)
    except KobanUnavailable as exc:
        reason, status = "unavailable", exc.status
    except KobanError as exc:
        reason, status = ("koban_error" if exc.status else "unreadable"), exc.status
    else:
        if guid is not None:
            return guid
        reason = "not_found"
    log.warning(
        "prospect_lookup_failed",
        tenant=tenant.name,
        programme=req.programme,
        reason=reason,
        status=status,
    )
    return None


async def _done(
    tenant: Tenant,
    records: DenonciationProgress,
    req: DenonciationRequest,
    progress: dict[str, Any],
    scope: str | None,
) -> Denonciation:
    if not progress.get("done"):
        progress["done"] = True
        event = _created_event(req, progress, tenant.clock.now())
        await records.save_with_event(scope, progress, event)
    return Denonciation(
        third_guid=progress.get("thirdGuid"),
        programme=req.programme,
        created_prospect=bool(progress.get("createdProspect")),
        by=req.by,
    )
