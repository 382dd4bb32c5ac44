"""The two ways a route gets its OpenAPI description — `@documented` on the handler and
`describe(method, template, …)` — give the same operation, the handler's own wins, and a
documented handler validates its query and body with the operation's models."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import BaseModel, ConfigDict

from service.entrypoints.api.errors import ApiError
from service.entrypoints.api.openapi import (
    OPERATIONS,
    Operation,
    Reply,
    describe,
    documented,
    operation_of,
    operations,
)
from service.entrypoints.api.openapi_builder import build_openapi


class ThingsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    limit: int = 10


class ThingIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str


LIST = Operation("Things", "misc", {200: Reply(None, "ok")}, scope="read", query=ThingsQuery)
MAKE = Operation("Make a thing", "misc", {201: Reply(None, "made")}, scope="write", body=ThingIn)


@documented(LIST)
async def list_things(request: web.Request) -> web.Response:
    """Lists the things."""
    query = LIST.parse_query(request)
    return web.json_response({"limit": query.limit})


async def list_things_plain(request: web.Request) -> web.Response:
    """Lists the things."""
    return web.json_response({})


@pytest.fixture
def described() -> Any:
    keys: list[tuple[str, str]] = []

    def register(method: str, path: str, op: Operation) -> None:
        describe(method, path, op)
        keys.append((method, path))

    yield register
    for key in keys:
        OPERATIONS.pop(key, None)


def test_a_decorated_handler_and_a_described_route_give_the_same_operation(
    described: Any,
) -> None:
    decorated = web.Application()
    decorated.router.add_get("/things", list_things)
    plain = web.Application()
    plain.router.add_get("/things", list_things_plain)
    described("GET", "/things", LIST)
    one = build_openapi(decorated)["paths"]["/things"]["get"]
    other = build_openapi(plain)["paths"]["/things"]["get"]
    assert one == other
    assert one["summary"] == "Things" and one["x-scope"] == "read"
    assert [p["name"] for p in one["parameters"]] == ["limit"]


def test_the_handlers_own_operation_wins_over_describe(described: Any) -> None:
    described("GET", "/things", MAKE)
    assert operation_of("GET", "/things", list_things) is LIST
    assert operation_of("get", "/things", list_things_plain) is MAKE
    assert operation_of("GET", "/elsewhere", list_things_plain) is None
    app = web.Application()
    app.router.add_get("/things", list_things)
    app.router.add_post("/made", list_things_plain)
    found = operations(app)
    assert found[("GET", "/things")] is LIST and ("POST", "/made") not in found


async def test_a_documented_handler_reads_its_query_through_the_operation() -> None:
    ok = await list_things(make_mocked_request("GET", "/things?limit=3"))
    assert ok.status == 200 and ok.text == '{"limit": 3}'
    with pytest.raises(ApiError) as refused:
        await list_things(make_mocked_request("GET", "/things?colour=red"))
    assert refused.value.status == 422


def test_the_body_is_validated_by_the_operations_model() -> None:
    assert MAKE.validate_body({"name": "x"}) == ThingIn(name="x")
    with pytest.raises(ApiError) as refused:
        MAKE.validate_body({"name": "x", "extra": 1})
    assert refused.value.status == 422
    with pytest.raises(TypeError):
        MAKE.parse_query(make_mocked_request("GET", "/made"))
