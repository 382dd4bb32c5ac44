"""Wiring of the operator page into the API app (`install_ui`) and its routes' entries
in ``/openapi.json``."""

from __future__ import annotations

from aiohttp import web

from service.entrypoints.api.middleware import SESSION_LOOKUP
from service.entrypoints.api.openapi import Operation, Reply, describe
from service.entrypoints.ui.assets import Assets
from service.entrypoints.ui.explorer import explorer
from service.entrypoints.ui.pages import ASSETS_KEY, lot_page, overview
from service.entrypoints.ui.session import (
    SESSIONS_KEY,
    find_session,
    sign_in,
    sign_out,
)
from service.storage.redis_client import RedisClient
from service.storage.sessions import SessionStore

__all__ = ["install_ui"]

_HTML = "text/html"
_PAGE = {"type": "string"}


def _describe() -> None:
    tag = "operator page"
    page = Reply(None, "The page.", _HTML, _PAGE)
    signed_out = Reply(None, "No session: the sign-in form.", _HTML, _PAGE)
    describe(
        "GET",
        "/ui/",
        Operation(
            "The operator page: a tenant at a glance",
            tag,
            {200: page, 401: signed_out},
            auth="none",
            description="Needs the session cookie of `POST /ui/session`.",
        ),
    )
    describe(
        "GET",
        "/ui/lots/{extcode}",
        Operation(
            "The operator page: one lot",
            tag,
            {200: page, 401: signed_out},
            errors={404: ["LOT_UNKNOWN"], 503: ["STORE_UNAVAILABLE"]},
            auth="none",
            description="Needs the session cookie of `POST /ui/session`.",
        ),
    )
    describe(
        "POST",
        "/ui/session",
        Operation(
            "Sign in to the operator page with an API token (form field `token`)",
            tag,
            {
                303: Reply(None, "Signed in: the session cookie, then `/ui/`.", _HTML, _PAGE),
                401: Reply(None, "Token not recognised: the sign-in form again.", _HTML, _PAGE),
            },
            errors={403: ["FORBIDDEN"], 503: ["STORE_UNAVAILABLE"]},
            auth="none",
            extra_query=(),
            description=(
                "Form `application/x-www-form-urlencoded` with `token`. Answers an HttpOnly, "
                "SameSite=Strict cookie holding a new opaque session id. A form posted from "
                "another origin is refused (403)."
            ),
        ),
    )
    describe(
        "DELETE",
        "/ui/session",
        Operation(
            "Sign out: revoke the session",
            tag,
            {204: Reply(None, "Revoked; the cookie is cleared.", _HTML, _PAGE)},
            errors={401: ["UNAUTHENTICATED"], 403: ["FORBIDDEN"], 503: ["STORE_UNAVAILABLE"]},
            auth="none",
            description="Needs the session cookie and its `X-CSRF-Token` header.",
        ),
    )
    describe(
        "GET",
        "/ui/static/{name}",
        Operation(
            "A file of the operator page or of the API explorer",
            tag,
            {200: Reply(None, "The file.", "*/*", {"type": "string"})},
            errors={404: ["NOT_FOUND"]},
            auth="none",
        ),
    )
    describe(
        "GET",
        "/docs",
        Operation(
            "An interactive explorer of this document (Swagger UI)",
            "operations",
            {200: Reply(None, "HTML.", _HTML, _PAGE)},
            auth="none",
        ),
    )


def install_ui(app: web.Application, redis: RedisClient) -> None:
    """Register the page's routes, its session store and the cookie lookup on `app`."""
    assets = Assets()
    app[ASSETS_KEY] = assets
    app[SESSIONS_KEY] = SessionStore(redis)
    app[SESSION_LOOKUP] = find_session
    app.router.add_get("/ui/", overview)
    app.router.add_get("/ui/lots/{extcode}", lot_page)
    app.router.add_post("/ui/session", sign_in)
    app.router.add_delete("/ui/session", sign_out)
    app.router.add_get("/ui/static/{name:.+}", assets.serve)
    app.router.add_get("/docs", explorer)
    _describe()
