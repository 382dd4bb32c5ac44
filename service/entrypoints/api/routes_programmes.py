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
from service.entrypoints.api.models import Limit, LotListOut, LotOut, NoQuery, dump
from service.entrypoints.api.openapi import AUTH_ERRORS, READ, Operation, Reply, documented, merge
from service.entrypoints.api.paging import Position, decode_cursor, encode_cursor
from service.entrypoints.api.routes_lots import BASE, lot_out
from service.storage.codec import decode_lot
from service.storage.lot_reads import raw_lots
from service.storage.paging import lots_after
from service.usecases.programmes import programme_counts, programmes
from statecharts import transitions as tr

__all__ = ["PROGRAMME_UNKNOWN", "routes"]

PROGRAMME_UNKNOWN = "PROGRAMME_UNKNOWN"
SCAN_BATCH = 200
SCAN_BUDGET = 5000
_START: Position = (-(2**53), None)
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
    statuses = (
        None if query.status is None else {s.strip().upper() for s in query.status.split(",")}
    )
    position = _START if query.cursor is None else decode_cursor(query.cursor)
    now = tenant.clock.now()
    items: list[LotOut] = []
    scanned, exhausted = 0, False
    while len(items) < query.limit and scanned < SCAN_BUDGET:
        batch = await lots_after(tenant.store, position, SCAN_BATCH)
        raws = await raw_lots(tenant.store, [c for c, _ in batch])
        consumed = 0
        for (extcode, score), raw in zip(batch, raws, strict=True):
            consumed += 1
            scanned += 1
            position = (score, extcode)
            if raw is None:
                continue
            lot = decode_lot(extcode, raw)
            if lot.program != code:
                continue
            tr.expire_due(lot, now, tenant.rules)
            if statuses is not None and lot.status.upper() not in statuses:
                continue
            items.append(lot_out(lot, caller))
            if len(items) >= query.limit:
                break
        if len(batch) < SCAN_BATCH and consumed == len(batch):
            exhausted = True
            break
    cursor = None if exhausted else encode_cursor(position)
    return json_response(dump(LotListOut(items=items, next_cursor=cursor)))
