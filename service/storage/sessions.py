"""Operator-page sessions in Redis (the sign-in of ``/ui/``).

A session is an opaque random id handed to the browser in a cookie; Redis keeps, under the
id's SHA-256 and with a real-time TTL, which API token signed in (its SHA-256, never the
token) and the session's CSRF value. Signing in always makes a new id (rotation); signing
out deletes the key (revocation). Whether the token is still configured is judged by the
caller on every use, so removing a token from the configuration ends its sessions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import orjson

from service.storage.keys import ui_session
from service.storage.redis_client import RedisClient

__all__ = ["SESSION_TTL_S", "SessionStore", "UiSession"]

SESSION_TTL_S = 8 * 3600  # one working day: an operator signs in again the next morning
_ID_BYTES = 32
# What `secrets.token_urlsafe(_ID_BYTES)` makes: anything else is not looked up at all.
_ID_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class UiSession:
    tenant: str
    token_id: str  # SHA-256 (hex) of the API token that signed in
    csrf: str  # the value writes made with this session must send as X-CSRF-Token


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


class SessionStore:
    def __init__(self, redis: RedisClient, ttl_s: int = SESSION_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def open(self, tenant: str, token_id: str) -> tuple[str, UiSession]:
        """A new session for the token: (its id for the cookie, the session)."""
        session_id = secrets.token_urlsafe(_ID_BYTES)
        session = UiSession(tenant, token_id, secrets.token_urlsafe(_ID_BYTES))
        body = orjson.dumps({"t": tenant, "k": token_id, "c": session.csrf})
        await self.redis.set(ui_session(_digest(session_id)), body, ex=self.ttl_s)
        return session_id, session

    async def find(self, session_id: str) -> UiSession | None:
        if not _ID_SHAPE.match(session_id):
            return None
        raw = await self.redis.get(ui_session(_digest(session_id)))
        if raw is None:
            return None
        try:
            fields = orjson.loads(raw)
            return UiSession(str(fields["t"]), str(fields["k"]), str(fields["c"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # not one of ours: as if absent

    async def revoke(self, session_id: str) -> None:
        if _ID_SHAPE.match(session_id):
            await self.redis.delete(ui_session(_digest(session_id)))
