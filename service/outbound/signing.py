"""Subscription secrets: made, kept encrypted at rest, and used to sign each attempt.

A secret is ``whsec_`` + base64 of 24 random bytes (the Standard Webhooks form). At rest
it is a Fernet token under the key(s) of ``KOBAN_OPTIONS_SUBSCRIPTION_KEY`` (comma-separated
Fernet keys: the first encrypts, every one decrypts, so the key can be rotated). Headers
follow Standard Webhooks; with several live secrets (a rotation's 24 h overlap) the
signature header carries one ``v1,…`` per secret, space-separated, as the spec allows.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from standardwebhooks import Webhook

__all__ = ["SecretBox", "SecretBoxError", "new_secret", "signature_headers"]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class SecretBoxError(ValueError):
    """A subscription key that is not a Fernet key, or a stored secret it cannot open."""


class SecretBox:
    """Encrypts subscription secrets with the service's subscription key(s)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretBoxError("the subscription key is empty")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except (ValueError, TypeError):
            # Never echo the value: it is the key.
            raise SecretBoxError(
                "the subscription key must be Fernet keys (url-safe base64 of 32 bytes), "
                "comma-separated"
            ) from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretBoxError("a stored secret does not open with this key") from None


def signature_headers(
    msg_id: str, payload: str, secrets_: Sequence[str], at: datetime | None = None
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` (now, real time: receivers compare it with
    their own clock) and ``webhook-signature`` for `payload`, one signature per secret."""
    moment = at or datetime.now(UTC)
    signatures = " ".join(Webhook(s).sign(msg_id, moment, payload) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signatures,
    }
