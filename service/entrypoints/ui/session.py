"""Signing in to the operator page (``POST``/``DELETE /ui/session``) and the lookup that
turns the session cookie into `UI_SESSION` for `TokenIndex.authenticate` (the API's
middleware calls it for requests that carry a cookie).

Sign-in takes an API token from a form (never from a URL), checks it like a bearer token,
and answers with a new opaque session id in an HttpOnly, SameSite=Strict cookie (``Secure``
when the request came over TLS, directly or through a proxy that says so). A cookie the
request already carried is revoked first: every sign-in rotates the id. Sign-out needs the
session's ``X-CSRF-Token`` like any other write made with the cookie.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from service.entrypoints.api.auth import CSRF_HEADER, UI_SESSION, Caller, csrf_matches
from service.entrypoints.api.context import TOKENS_KEY
from service.entrypoints.api.errors import FORBIDDEN, UNAUTHENTICATED, ApiError, malformed
from service.entrypoints.ui.render import sign_in_page
from service.storage.sessions import SessionStore, UiSession

__all__ = ["COOKIE", "SESSIONS_KEY", "find_session", "sign_in", "sign_out"]

COOKIE = "kol_session"
SESSIONS_KEY = web.AppKey("ui_sessions", SessionStore)
MAX_TOKEN = 512  # far above any configured token; a longer field is not one
FORM = "application/x-www-form-urlencoded"


def _from_page(request: web.Request) -> bool:
    """Was the form sent by a page of this origin (or by a client that names none)? Another
    site's form could otherwise sign a browser in under the other site's token."""
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


async def find_session(request: web.Request) -> None:
    """`UI_SESSION` from the cookie of a request that has one (the API's middleware calls
    this only then). Only a request without a bearer header is looked up (a token always
    wins), and never for the page's static files, which every load fetches."""
    if (
        "Authorization" not in request.headers
        and request.path.startswith(("/v1/", "/ui/", "/docs"))
        and not request.path.startswith("/ui/static/")
    ):
        session_id = request.cookies.get(COOKIE)
        if session_id:
            session = await request.app[SESSIONS_KEY].find(session_id)
            if session is not None:
                request[UI_SESSION] = session


def session_of(request: web.Request) -> tuple[UiSession, Caller] | None:
    """The request's session and who it acts as (None: signed out, or its token removed)."""
    session = request.get(UI_SESSION)
    if session is None:
        return None
    caller = request.app[TOKENS_KEY].session_caller(session)
    return (session, caller) if caller is not None else None


def _cookie(response: web.StreamResponse, request: web.Request, value: str, max_age: int) -> None:
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


async def _token_field(request: web.Request) -> str | None:
    """The form's ``token``. Read here rather than by ``request.post()``, which answers a
    body that is not UTF-8, or names an unknown charset, with a 500."""
    if request.content_type != FORM or (request.charset or "utf-8").lower() != "utf-8":
        raise malformed(f"Send the form as {FORM} (UTF-8).")
    body = await request.read()
    try:
        pairs = parse_qsl(body.decode(), encoding="utf-8", errors="strict", max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise malformed("Unreadable form body.") from None
    return dict(pairs).get("token")


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Sign in with an API token (form field ``token``): a session cookie, then the page."""
    if not _from_page(request):
        raise ApiError(403, FORBIDDEN, "Sign in from this service's own page.")
    token = await _token_field(request)
    if token is None or not token.strip() or len(token) > MAX_TOKEN:
        return sign_in_page("Enter an API token.", 401)
    entry = request.app[TOKENS_KEY].identify(token.strip())
    if entry is None:
        return sign_in_page("This token is not recognised.", 401)
    sessions = request.app[SESSIONS_KEY]
    old = request.cookies.get(COOKIE)
    if old:
        await sessions.revoke(old)
    session_id, _ = await sessions.open(entry.caller.tenant.name, entry.caller.token_id)
    response = web.Response(status=303, headers={"Location": "/ui/"})
    _cookie(response, request, session_id, sessions.ttl_s)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """Revoke the request's session (needs its ``X-CSRF-Token``) and clear the cookie."""
    found = session_of(request)
    if found is None:
        raise ApiError(401, UNAUTHENTICATED, "No session to sign out of.")
    session, _ = found
    if not csrf_matches(request, session):
        raise ApiError(403, FORBIDDEN, f"Signing out needs the session's {CSRF_HEADER} header.")
    await request.app[SESSIONS_KEY].revoke(request.cookies[COOKIE])
    response = web.Response(status=204)
    _cookie(response, request, "", 0)
    return response
