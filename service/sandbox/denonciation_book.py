"""What the sandbox's Koban holds about dénonciations (kept apart from the HTTP handlers
in `denonciations`, which `state` cannot import without a cycle)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Denonciations"]


@dataclass(slots=True)
class Denonciations:
    """(programme, third guid) → the CGP it was made by; programmes with the module off."""

    made: dict[tuple[str, str], str | None] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
