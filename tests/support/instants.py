"""Instants written as ISO-8601 UTC text, as the tests pin them."""

from __future__ import annotations

from datetime import datetime


def at(text: str) -> datetime:
    """The aware UTC datetime of ISO-8601 text (what APScheduler's triggers take)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ts(text: str) -> int:
    """UNIX seconds of ``2026-11-23T10:10:00Z`` (or any ISO-8601 text with an offset)."""
    return int(at(text).timestamp())
