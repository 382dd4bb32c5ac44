"""Koban's lead webhook over HTTP: ``POST /koban/{tenant}/lead``, form-encoded.

Tenant, token and body are read as for Koban's other webhooks (`koban_webhooks`), but the
form is kept as all its pairs: ``Tags[0].Label``-style fields repeat a name's stem. The
answer is Koban's expected ``{"success": true}``, also for a repeat inside the dedup
window. Log lines name the tenant and the lead's guid, never its contact details.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from service.entrypoints.koban_webhooks import (
    FORM_CONTENT_TYPE,
    MAX_FIELDS,
    PREFIX,
    WebhookError,
    _charset,
    _malformed,
    _read_body,
    _Webhooks,
)
from service.koban.lead_form import LeadForm, LeadFormError, parse_lead_form
from service.storage.errors import STORE_FAILURES
from service.tenancy import Tenants
from service.usecases.leads import receive_lead

__all__ = ["LEAD", "add_lead_webhook"]

log = structlog.get_logger("service.entrypoints.koban_webhooks")

LEAD = "lead"


async def read_lead_form(request: web.Request) -> LeadForm:
    if request.content_type != FORM_CONTENT_TYPE:
        raise _malformed(f"expected Content-Type {FORM_CONTENT_TYPE}")
    charset = _charset(request.charset)
    body = await _read_body(request)
    try:
        pairs = parse_qsl(
            body.decode(charset),
            keep_blank_values=True,
            encoding=charset,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
        return parse_lead_form(pairs)
    except LeadFormError as exc:
        raise _malformed(str(exc)) from None
    except (LookupError, UnicodeDecodeError, ValueError):
        raise _malformed("unreadable form body") from None


def add_lead_webhook(app: web.Application, tenants: Tenants) -> None:
    """Register ``POST /koban/{tenant}/lead`` (before the webhooks' catch-all route)."""
    hooks = _Webhooks(tenants)

    async def handle(request: web.Request) -> web.Response:
        try:
            tenant = hooks.tenant(request)
            hooks.authenticate(request, tenant)
            form = await read_lead_form(request)
            try:
                event_id = await receive_lead(tenant, form)
            except STORE_FAILURES:
                raise WebhookError(503, "STORE_UNAVAILABLE", "store unavailable") from None
        except WebhookError as exc:
            # `exc.message` names a field at most, never its value.
            hooks._refused(request, LEAD, exc)
            return exc.response()
        log.info(
            "koban_webhook",
            tenant=tenant.name,
            webhook=LEAD,
            lead=form.guid,
            outcome="received" if event_id else "duplicate",
        )
        return web.json_response({"success": True})

    app.router.add_post(PREFIX + LEAD, handle)
