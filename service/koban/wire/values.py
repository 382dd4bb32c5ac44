"""Koban's scalar values read leniently: euros from cents, two-digit error codes, booleans
and text in the forms Koban sends, keys folded to lower case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cents_to_euros(cents: int) -> float:
    """Amounts go to Koban as euros with two decimals; the service counts in cents."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"amount in cents must be an int, got {type(cents).__name__}")
    if cents < 0:
        raise ValueError("amount must not be negative")
    return round(cents / 100, 2)


def normalise_error_code(value: Any) -> str | None:
    """``5`` / ``"5"`` / ``"05"`` → ``"05"``; empty → None; other text kept (upper-cased)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value:02d}"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value):02d}"
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return f"{int(text):02d}"
    return text.upper()


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "ok"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_text(value: Any) -> str | None:
    """Message / Errors: a string, a list of strings or of {Message: ...} objects."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        folded = {str(k).lower(): v for k, v in value.items()}
        for key in ("message", "label", "error"):
            if key in folded:
                return as_text(folded[key])
        return str(dict(value))
    if isinstance(value, list | tuple):
        parts = [text for item in value if (text := as_text(item))]
        return "; ".join(parts) or None
    return str(value)


def fold_keys(data: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys lower-cased (the first spelling wins when two differ only by case)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.setdefault(str(key).lower(), value)
    return out
