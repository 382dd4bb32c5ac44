"""The rules most tests run under: Europe/Paris, options living two days."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from statecharts.model import Rules
from statecharts.ticks import parse_duration

PARIS = ZoneInfo("Europe/Paris")


def make_rules(**overrides: object) -> Rules:
    values: dict[str, object] = {"zone": PARIS, "option_lifetime": parse_duration("P2D")}
    values.update(overrides)
    return Rules(**values)  # type: ignore[arg-type]
