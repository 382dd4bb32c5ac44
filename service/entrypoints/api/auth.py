"""Bearer tokens (docs/api.md): who calls, for which tenant, with which scopes and partner.

Tokens are configured per tenant (``TenantSettings.api_tokens``). A presented token is
hashed (SHA-256) and compared with ``hmac.compare_digest`` against *every* configured
token of every tenant, without stopping at a match, so the time taken says nothing about
which token or tenant matched.

Answers, in this order:

* no ``Authorization: Bearer <token>`` header, or a token no tenant knows → 401
  ``UNAUTHENTICATED`` (so an outsider cannot tell tenants that exist from others);
* a token of another tenant, or any token on an unknown tenant → 404 ``TENANT_UNKNOWN``;
* a scope the token lacks → 403 ``FORBIDDEN``.

Scopes nest: ``admin`` may do everything, ``write`` may also read, ``read`` only reads.
A partner token (``partner_guid``) acts only as its partner; `Caller.sees` says whose
holder fields it may read (its own partner's options only).

Without a bearer header, an operator-page session (`UI_SESSION`, set on the request by the
page's middleware from its cookie) stands for the token that signed in: same answers,
scopes and partner, as long as that token is still configured; a write made with it must
also carry the session's ``X-CSRF-Token`` or gets 403 ``FORBIDDEN``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from service.config import ApiToken
from service.entrypoints.api.errors import FORBIDDEN, TENANT_UNKNOWN, UNAUTHENTICATED, ApiError
from service.storage.sessions import UiSession
from service.tenancy import Tenant, Tenants

__all__ = ["CSRF_HEADER", "UI_SESSION", "Caller", "Scope", "TokenIndex", "csrf_matches"]

UI_SESSION = web.RequestKey("ui_session", UiSession)
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = Literal["read", "write", "admin"]
_IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller of one tenant."""

    tenant: Tenant
    token_id: str  # SHA-256 of the token (hex): scopes idempotency keys, never logged raw
    scopes: frozenset[str]
    partner: str | None
    cgp: str | None = None  # the CGP this token's dénonciations are made `By`

    def sees(self, partner: str | None) -> bool:
        """May this caller read the holder fields of something placed by `partner`?"""
        return self.partner is None or self.partner == partner


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    caller: Caller  # who the token authenticates (made once per token)


def _entry(digest: bytes, tenant: Tenant, token: ApiToken) -> _Entry:
    granted = frozenset().union(*(_IMPLIED[s] for s in token.scopes))
    return _Entry(digest, Caller(tenant, digest.hex(), granted, token.partner_guid, token.cgp_guid))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenIndex:
    """Every configured token, hashed."""

    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants
        self._entries = [
            _entry(_digest(t.token.get_secret_value()), tenant, t)
            for tenant in tenants.values()
            for t in tenant.settings.api_tokens
        ]
        self._by_id = {entry.caller.token_id: entry for entry in self._entries}

    def identify(self, presented: str) -> _Entry | None:
        digest = _digest(presented)
        found: _Entry | None = None
        for entry in self._entries:  # no early exit: constant time over all tokens
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def session_caller(self, session: UiSession) -> Caller | None:
        """Who a session acts as: None once its token is no longer configured."""
        entry = self._by_id.get(session.token_id)
        return entry.caller if entry is not None else None

    def authenticate(self, request: web.Request, tenant_name: str, scope: Scope) -> Caller:
        presented = bearer(request)
        entry = self.identify(presented) if presented is not None else None
        session = request.get(UI_SESSION) if presented is None else None
        if session is not None:
            entry = self._by_id.get(session.token_id)  # gone when its token was removed
        if entry is None:
            raise ApiError(
                401,
                UNAUTHENTICATED,
                "A valid 'Authorization: Bearer <token>' header is required.",
                headers={"WWW-Authenticate": 'Bearer realm="koban-options"'},
            )
        caller = entry.caller
        if caller.tenant.name != tenant_name:
            raise ApiError(404, TENANT_UNKNOWN, f"Unknown tenant {tenant_name!r}.")
        if scope not in caller.scopes:
            raise ApiError(403, FORBIDDEN, f"This token lacks the {scope!r} scope.")
        writing = request.method not in _SAFE_METHODS
        if session is not None and writing and not csrf_matches(request, session):
            raise ApiError(
                403, FORBIDDEN, f"A write made with a session needs its {CSRF_HEADER} header."
            )
        return caller  # immutable: made once per token

    def authenticate_any(self, request: web.Request, scope: Scope) -> Caller:
        """A token of any tenant with `scope`, for what is the same for every tenant (the
        event schemas)."""
        presented = bearer(request)
        entry = self.identify(presented) if presented is not None else None
        if entry is None:
            return self.authenticate(request, "", scope)  # the 401 above
        if scope not in entry.caller.scopes:
            raise ApiError(403, FORBIDDEN, f"This token lacks the {scope!r} scope.")
        return entry.caller


def csrf_matches(request: web.Request, session: UiSession) -> bool:
    """Does the request carry the session's CSRF value (compared in constant time)?"""
    sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogatepass")
    return hmac.compare_digest(sent, session.csrf.encode())


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def forbid_partner(caller: Caller, partner: str | None, what: str) -> None:
    """403 unless `caller` may act on something of `partner`."""
    if not caller.sees(partner):
        raise ApiError(403, FORBIDDEN, f"This partner token may not act on {what}.")
