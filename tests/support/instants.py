"""Instants written as ISO-8601 UTC text, as the tests pin them."""

from __future__ import annotations

from datetime import datetime


def ts(text: str) -> int:
    """UNIX seconds of ``2026-11-23T10:10:00Z`` (or any ISO-8601 text with an offset)."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
