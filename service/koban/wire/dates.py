"""Koban's instants: UNIX seconds or milliseconds, .NET ``/Date(…)/``, ISO text, and its
"no date" sentinel, all read into UNIX seconds.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

MS_THRESHOLD = 10**11
"""A timestamp above this is in milliseconds (10^11 s is the year 5138)."""

_DOTNET_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")


def to_unix(seconds: int) -> int:
    """An outgoing date: UNIX seconds, checked (a millisecond value is a caller bug)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError(f"UNIX seconds must be an int, got {type(seconds).__name__}")
    if seconds < 0 or seconds > MS_THRESHOLD:
        raise ValueError(f"{seconds} is not a UNIX time in seconds")
    return seconds


NO_DATE_MS = -62135596800000
"""``/Date(-62135596800000)/`` is .NET's ``DateTime.MinValue`` (year 1): Koban's "no date"."""


def koban_instant(value: Any) -> float | None:
    """Any date Koban sends → UNIX seconds (fraction kept), or None when absent.

    The one parser for API answers and webhook forms: numbers or digit strings (seconds,
    or milliseconds above 10^11), .NET ``/Date(ms)/`` (year 1 = no date) and ISO-8601
    (naive means UTC: account.md's ``Updated`` agrees with its ``DUpdated`` read so).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not text.isascii():
            # float() and fromisoformat() take other scripts' digits; Koban writes ASCII.
            raise ValueError(f"not a timestamp: {value!r}")
        dotnet = _DOTNET_DATE.match(text)
        if dotnet:
            ms = int(dotnet.group(1))
            return None if ms <= NO_DATE_MS else ms / 1000
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not a timestamp: {value!r}") from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"not a timestamp: {value!r}")
    return number / 1000 if number > MS_THRESHOLD else number


def from_unix(value: Any) -> int | None:
    """An incoming timestamp → whole UNIX seconds (`koban_instant`, floored), or None."""
    seconds = koban_instant(value)
    return None if seconds is None else math.floor(seconds)
