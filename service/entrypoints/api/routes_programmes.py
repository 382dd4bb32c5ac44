"""``GET …/programmes`` (the programmes of Koban's GetAll, as the last stock sync stored
them, with their lots counted per status) and ``GET …/programmes/{code}/lots`` (that
programme's lots, paged as ``GET …/lots``). ``code`` is what lots call ``program``."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints

from service.entrypoints.api.contact_models import CamelOut
from service.entrypoints.api.context import authenticate
from service.entrypoints.api.errors import ApiError, json_response
from service.entrypoints.api.models import Limit, LotListOut, NoQuery, dump
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.paging import decode_cursor
from service.entrypoints.api.routes_lots import BASE, START, lot_page, status_filter
from service.usecases.programmes import programme_counts, programmes
from statecharts.model import Lot

__all__ = ["PROGRAMME_UNKNOWN", "routes"]

PROGRAMME_UNKNOWN = "PROGRAMME_UNKNOWN"
_CODE_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128}

routes = web.RouteTableDef()


class LotCountsOut(CamelOut):
    total: int
    by_status: dict[str, int]


class ProgrammeOut(CamelOut):
    code: str
    label: str | None
    lots: LotCountsOut


class ProgrammeListOut(CamelOut):
    items: list[ProgrammeOut]


class ProgrammeLotsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    limit: Limit = 100
    cursor: Annotated[str, StringConstraints(max_length=1024)] | None = None


LIST_PROGRAMMES = Operation(
    "The tenant's programmes, with their lots counted per status",
    "programmes",
    {200: Reply(ProgrammeListOut, "Koban's programmes as the last stock sync read them.")},
    AUTH_ERRORS,
    scope=READ,
    query=NoQuery,
)

PROGRAMME_LOTS = Operation(
    "One programme's lots, paginated by last modification",
    "programmes",
    {200: Reply(LotListOut, "A page of the programme's lots and the next cursor.")},
    merge(AUTH_ERRORS, {404: [PROGRAMME_UNKNOWN]}),
    scope=READ,
    query=ProgrammeLotsQuery,
    path_schemas={"code": _CODE_SCHEMA},
)


@routes.get(BASE + "/programmes")
@documented(LIST_PROGRAMMES)
async def list_programmes(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    LIST_PROGRAMMES.parse_query(request)
    tenant = caller.tenant
    counts = await programme_counts(tenant, tenant.clock.now())
    items = []
    for p in await programmes(tenant):
        code = str(p["code"])
        per_status = counts.get(code)
        by_status = dict(sorted(per_status.items())) if per_status else {}
        items.append(
            ProgrammeOut(
                code=code,
                label=p.get("label"),
                lots=LotCountsOut(total=sum(by_status.values()), by_status=by_status),
            )
        )
    return json_response(dump(ProgrammeListOut(items=items)))


@routes.get(BASE + "/programmes/{code}/lots")
@documented(PROGRAMME_LOTS)
async def programme_lots(request: web.Request) -> web.Response:
    caller = authenticate(request, "read")
    query = PROGRAMME_LOTS.parse_query(request)
    tenant = caller.tenant
    code = request.match_info["code"]
    if not any(p["code"] == code for p in await programmes(tenant)):
        raise ApiError(404, PROGRAMME_UNKNOWN, f"No programme {code!r} in the last stock sync.")
    statuses = status_filter(query.status)

    def keep(lot: Lot) -> bool:
        return lot.program == code and (statuses is None or lot.status.upper() in statuses)

    position = START if query.cursor is None else decode_cursor(query.cursor)
    return await lot_page(caller, position, query.limit, keep)
