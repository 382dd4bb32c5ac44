"""``GET …/leads/{leadId}``: a lead's contact details as Koban's lead webhook gave them,
kept ``lead_retention``. Personal data: not for partner tokens (403), never logged."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import WithJsonSchema

from service.entrypoints.api.contact_models import CamelOut
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import FORBIDDEN, ApiError, json_response
from service.entrypoints.api.models import NoQuery
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.routes_lots import BASE
from service.usecases.leads import lead

__all__ = ["LEAD_UNKNOWN", "routes"]

LEAD_UNKNOWN = "LEAD_UNKNOWN"

routes = web.RouteTableDef()


class TagOut(CamelOut):
    tag_category_code: str
    label: str


class MoreFieldOut(CamelOut):
    field_id: str
    value: str


class LeadOut(CamelOut):
    lead_guid: str | None
    third_guid: str | None
    contact_type: str | None
    programmes: list[str]
    tags: list[TagOut]
    more_field_ids: list[str]
    optin: str | None
    name: str | None
    first_name: str | None
    email: str | None
    phone: str | None
    mobile: str | None
    comments: str | None
    more_fields: list[MoreFieldOut]
    received_at: Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


GET_LEAD = Operation(
    "A lead's contact details, as Koban's lead webhook sent them",
    "leads",
    {200: Reply(LeadOut, "The lead (kept `lead_retention` after its last webhook).")},
    merge(AUTH_ERRORS, {404: [LEAD_UNKNOWN]}),
    scope=READ,
    query=NoQuery,
    path_schemas={"leadId": {"type": "string", "minLength": 1, "maxLength": 200}},
)


@routes.get(BASE + "/leads/{leadId}")
@documented(GET_LEAD)
async def get_lead(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    GET_LEAD.parse_query(request)
    if caller.partner is not None:
        raise ApiError(403, FORBIDDEN, "A partner token may not read leads' contact details.")
    found = await lead(caller.tenant, request.match_info["leadId"])
    if found is None:
        raise ApiError(404, LEAD_UNKNOWN, "No lead with this guid (or it is past retention).")
    return json_response(found)
