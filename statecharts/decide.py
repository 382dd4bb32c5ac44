"""Fast decisions from the compiled lot chart (a dict lookup instead of a chart run).

``decide`` answers exactly what ``lot_chart.run_chart`` answers (proved for every
configuration, event and fact combination by ``tests/unit/test_compiled_table.py``). Code that
decides in bulk (the sweep) takes a `DecisionEngine`: `COMPILED`, or `CHART` (a chart
object per decision, the benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .compiled import TABLE
from .errors import ErrorCode, RuleViolation
from .lot_chart import CONFIGS, FACTS, run_chart

Decide = Callable[[str, str, Mapping[str, bool | str] | None], str]
"""``decide(config, event, facts)``: the target configuration, or RuleViolation."""

_CONFIGS = frozenset(CONFIGS)
_NO_FACTS: dict[str, tuple[bool | str, ...]] = {
    event: tuple(False for _ in names) for event, names in FACTS.items()
}


def decide(config: str, event: str, facts: Mapping[str, bool | str] | None = None) -> str:
    """The configuration ``event`` leads to from ``config`` given ``facts``.

    Raises :class:`RuleViolation` when the chart refuses the event; ``ValueError`` for an
    unknown configuration or event, or fact values outside their domain (e.g. a missing
    or unknown ``sync_status`` target). Missing facts are False.
    """
    kind, value = verdict(config, event, facts)
    if kind == "ok":
        return value
    raise RuleViolation(ErrorCode(value))


def verdict(
    config: str, event: str, facts: Mapping[str, bool | str] | None = None
) -> tuple[str, str]:
    """`decide` without raising on a refusal: ``("ok", target configuration)`` or
    ``("error", error code value)`` (raising costs more than the lookup on hot reads)."""
    names = FACTS.get(event)
    if names is None:
        raise ValueError(f"unknown lot event {event!r}")
    if config not in _CONFIGS:
        raise ValueError(f"unknown lot configuration {config!r}")
    values = tuple(facts.get(n, False) for n in names) if facts else _NO_FACTS[event]
    row = TABLE.get((config, event, values))
    if row is None:
        raise ValueError(f"fact values out of domain for {event!r}: {values!r}")
    return row


@dataclass(frozen=True, slots=True)
class DecisionEngine:
    """Who answers the chart's questions for code that asks many of them."""

    decide: Decide
    # Whether a caller may remember answers by their arguments instead of asking again
    # (both engines are pure; the baseline must pay for every decision to be one).
    rememberable: bool


COMPILED = DecisionEngine(decide, rememberable=True)
CHART = DecisionEngine(run_chart, rememberable=False)
