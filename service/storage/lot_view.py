"""The store's working pieces: what a change is handed (`Counts`) and returns (`ChangeFn`),
a lot's `View` (what its indexes and counts are derived from), ids, and the conflict a
write gives up with."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.storage.keys import API_USER_FIELD, prospect_field
from statecharts.model import DomainEvent, Lot, Option

__all__ = ["ChangeFn", "Counts", "StoreConflict", "View", "new_id", "view"]

T = TypeVar("T")


def new_id() -> str:
    """Option and intent ids: 72 random bits, URL-safe, short (they sit in several indexes)."""
    return secrets.token_urlsafe(9)


class StoreConflict(Exception):
    """A lot changed under us more times than `max_attempts`: the caller may retry later."""


@dataclass(frozen=True, slots=True)
class Counts:
    """What the placement rules need beyond the lot: tenant-wide counts."""

    prospect: int = 0
    user: int = 0
    extra: Any = None  # what `mutate(prefetch=...)` read at this attempt


ChangeFn = Callable[[Lot, Counts], tuple[list[DomainEvent], T]]


@dataclass(slots=True)
class View:
    """What indexes and counts are derived from: a lot's options and intents, keyed."""

    rev: int
    version: int
    expiries: dict[str, int]
    counts: Counter[str]
    intents: dict[str, int]
    options: dict[str, Option]


def view(lot: Lot) -> View:
    code = lot.extcode
    counts: Counter[str] = Counter()
    for o in lot.options:
        if o.holder is not None:
            counts[prospect_field(o.holder)] += 1
        if o.via_api:
            counts[API_USER_FIELD] += 1
    for i in lot.intents:
        counts[prospect_field(i.holder)] += 1
        counts[API_USER_FIELD] += 1
    return View(
        rev=lot.rev,
        version=lot.version,
        expiries={f"{code}/{o.id}": o.expiry for o in lot.options if o.expiry is not None},
        counts=counts,
        intents={f"{code}/{i.id}": i.created_at for i in lot.intents},
        options={o.id: o for o in lot.options},
    )
