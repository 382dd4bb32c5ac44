"""What Koban's webhooks refuse, over real HTTP: a missing or wrong secret (header, query or
both, as configured), an unknown tenant, a wrong method, garbage fields and unreadable
bodies; a refusal changes nothing.
"""

from __future__ import annotations

import pytest

from service.entrypoints.koban_webhooks import TOKEN_HEADER
from tests.support.webhooks_env import SECRET, A, Env, MakeEnv, placed


@pytest.fixture
async def env(make_env: MakeEnv) -> Env:
    return await make_env()


# --- authentication -----------------------------------------------------------------------


async def assert_untouched(env: Env) -> None:
    assert await env.lot() is None
    assert await env.needsync() == set()
    assert await env.stream() == []


@pytest.mark.parametrize(
    "headers",
    [{}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: SECRET + "x"}, {TOKEN_HEADER: ""}],
)
async def test_wrong_or_missing_secret_is_401_and_changes_nothing(
    env: Env, headers: dict[str, str]
) -> None:
    status, body = await env.post("option-placed", placed(), headers=headers)
    assert status == 401
    assert body == {
        "success": False,
        "error": {"message": "missing or wrong webhook token", "code": "UNAUTHENTICATED"},
    }
    await assert_untouched(env)


async def test_secret_by_header_and_by_query_by_default(env: Env) -> None:
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 200
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 200
    # Both given: both must match.
    status, _ = await env.post(
        "option-placed", placed(), headers={TOKEN_HEADER: SECRET}, params={"token": "nope"}
    )
    assert status == 401


async def test_secret_by_header_only(make_env: MakeEnv) -> None:
    env = await make_env(webhook_auth={"header"})
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 401
    await assert_untouched(env)
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 200


async def test_secret_by_query_only(make_env: MakeEnv) -> None:
    env = await make_env(webhook_auth={"query"})
    status, _ = await env.post("option-placed", placed(), headers={TOKEN_HEADER: SECRET})
    assert status == 401
    await assert_untouched(env)
    status, _ = await env.post("option-placed", placed(), headers={}, params={"token": SECRET})
    assert status == 200


async def test_a_tenant_without_a_secret_refuses_every_webhook(make_env: MakeEnv) -> None:
    env = await make_env(webhook_secret=None)
    status, body = await env.post("option-placed", placed(), headers={TOKEN_HEADER: ""})
    assert status == 401 and body["success"] is False
    resp = await env.client.get(env.url("option-check"), params={"extcode": A, "token": ""})
    assert resp.status == 401
    await assert_untouched(env)


async def test_unknown_tenant_is_404(env: Env) -> None:
    resp = await env.client.post(
        "/koban/nobody/option-placed", data=placed(), headers={TOKEN_HEADER: SECRET}
    )
    assert resp.status == 404
    assert await resp.json() == {
        "success": False,
        "error": {"message": "unknown tenant", "code": "TENANT_UNKNOWN"},
    }


async def test_wrong_method_and_unknown_webhook_answer_json(env: Env) -> None:
    resp = await env.client.get(env.url("option-placed"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 405 and (await resp.json())["success"] is False
    resp = await env.client.post(env.url("option-nothing"), headers={TOKEN_HEADER: SECRET})
    assert resp.status == 404 and (await resp.json())["success"] is False


# --- malformed bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"Rank": "3"}, "Rank"),
        ({"Rank": "one"}, "Rank"),
        ({"ExpDate": "tomorrow"}, "ExpDate"),
        ({"ExpDate": "2026-13-45T10:00:00Z"}, "ExpDate"),
        ({"ExpDate": "/Date(abc)/"}, "ExpDate"),
        ({"ExpDate": "-5"}, "ExpDate"),
        ({"ExpDate": "9" * 30}, "ExpDate"),
        ({"ExpDate": ""}, "ExpDate"),
        ({"Third_Guid": ""}, "Third_Guid"),
        ({"Third_Guid": None}, "Third_Guid"),
        ({"Deal_Extcode": None}, "Deal_Extcode"),
        ({"Deal_Extcode": "A" * 300}, "Deal_Extcode"),
        ({"ExpDate": "\u0661\u0667\u0669\u0665\u0660\u0660\u0660\u0660\u0660\u0660"}, "ExpDate"),
        ({"Third_Guid": "p1/o2"}, "Third_Guid"),
        ({"Third_Guid": "p1|x"}, "Third_Guid"),
        ({"Deal_Extcode": "A1/B"}, "Deal_Extcode"),
    ],
)
async def test_garbage_fields_are_400_and_change_nothing(
    env: Env, change: dict[str, str | None], field: str
) -> None:
    form = placed()
    for key, value in change.items():
        if value is None:
            del form[key]
        else:
            form[key] = value
    status, body = await env.post("option-placed", form)
    assert status == 400
    assert body["success"] is False and body["error"]["code"] == "MALFORMED_REQUEST"
    assert field in body["error"]["message"]
    await assert_untouched(env)


async def test_wrong_content_type_oversized_and_unreadable_bodies_are_400(env: Env) -> None:
    url, auth = env.url("option-placed"), {TOKEN_HEADER: SECRET}
    resp = await env.client.post(url, json=placed(), headers=auth)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "MALFORMED_REQUEST"
    big = {**placed(), "Third_Name": "x" * (64 * 1024)}
    resp = await env.client.post(url, data=big, headers=auth)
    assert resp.status == 400 and "larger" in (await resp.json())["error"]["message"]
    form_type = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    resp = await env.client.post(url, data=b"Deal_Extcode=%FF%FE", headers=form_type)
    assert resp.status == 400
    twice = "&".join(f"{k}={v}" for k, v in placed().items()) + "&Third_Guid=other"
    resp = await env.client.post(url, data=twice.encode(), headers=form_type)
    assert resp.status == 400 and "twice" in (await resp.json())["error"]["message"]
    await assert_untouched(env)


async def test_empty_optional_fields_and_unknown_fields_are_accepted(env: Env) -> None:
    form = {**placed(), "Deal_Guid": "", "Third_Extcode": "", "Rank": "", "Whatever": "1"}
    await env.hook("option-placed", **form)
    lot = await env.lot()
    assert lot is not None and lot.guid is None and lot.options[0].rank == 1
