"""Koban's lead webhook over HTTP: ``POST /koban/{tenant}/lead``, form-encoded.

Tenant, token and body are read as for Koban's other webhooks (`koban_webhooks`), but the
form is kept as all its pairs: ``Tags[0].Label``-style fields repeat a name's stem. The
answer is Koban's expected ``{"success": true}``, also for a repeat inside the dedup
window. Log lines name the tenant and the lead's guid, never its contact details.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from service.entrypoints.api.openapi import FORM, Operation, Reply, describe
from service.entrypoints.api.openapi_webhooks import WebhookOkOut
from service.entrypoints.koban_webhooks import (
    LEAD,
    PREFIX,
    WebhookError,
    _malformed,
    _Webhooks,
    read_form_pairs,
)
from service.koban.lead_form import LeadForm, LeadFormError, parse_lead_form
from service.storage.errors import STORE_FAILURES
from service.tenancy import Tenants
from service.usecases.leads import receive_lead

__all__ = ["LEAD", "LeadWebhookForm", "add_lead_webhook"]

log = structlog.get_logger("service.entrypoints.koban_webhooks")


class LeadWebhookForm(BaseModel):
    """Koban's "Transmission d'une demande d'un lead". ``Lead_Guid`` or ``Third_Guid`` is
    required; ``Tags`` / ``MoreFields`` are JSON text, or indexed fields instead
    (``Tags[0].TagCategoryCode``, ``Tags[0].Label``, ``MoreFields[0].FieldId``, …)."""

    model_config = ConfigDict(extra="allow")

    contact_type: str | None = Field(default=None, alias="Contact_Type")
    lead_guid: str | None = Field(default=None, alias="Lead_Guid", max_length=200)
    third_guid: str | None = Field(default=None, alias="Third_Guid", max_length=200)
    name: str | None = Field(default=None, alias="Name")
    first_name: str | None = Field(default=None, alias="FirstName")
    email: str | None = Field(default=None, alias="EMail")
    phone: str | None = Field(default=None, alias="Phone")
    mobile: str | None = Field(default=None, alias="Mobile")
    tags: str | None = Field(default=None, alias="Tags")
    more_fields: str | None = Field(default=None, alias="MoreFields")
    optin: str | None = Field(default=None, alias="Optin")
    comments: str | None = Field(default=None, alias="Comments")


describe(
    "POST",
    PREFIX + LEAD,
    Operation(
        "Koban's lead webhook",
        "koban webhooks",
        {200: Reply(WebhookOkOut, "Received (a repeat inside `lead_dedup` included).")},
        {
            400: ["MALFORMED_REQUEST"],
            401: ["UNAUTHENTICATED"],
            404: ["TENANT_UNKNOWN"],
            503: ["STORE_UNAVAILABLE"],
        },
        auth="webhook",
        body=LeadWebhookForm,
        body_media=FORM,
        description=LeadWebhookForm.__doc__,
    ),
)


async def read_lead_form(request: web.Request) -> LeadForm:
    pairs = await read_form_pairs(request)
    try:
        return parse_lead_form(pairs)
    except LeadFormError as exc:
        raise _malformed(str(exc)) from None
    except ValueError:
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
