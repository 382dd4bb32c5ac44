"""Availability answers remembered per lot, keyed on everything that decides them.

``GET …/lots/{extcode}/availability`` (local, no ``thirdGuid``) answers from three
things: the lot's stored value, the API user's option count when the tenant limits it,
and the time, which matters only through lazy expiry — and lazy expiry changes nothing
until the next effective expiry of an option still held (`Lot.next_expiry` after
`expire_due`: expiries land on ticks and are worked through tick by tick, so the lot it
leaves is the same for every instant between the one it was judged at and that expiry).

So an answer, its JSON already rendered, stays right while the stored value is the same
bytes, the count the same number, the rules the same object and the time within
``[judged at, next expiry)``. The route still reads the lot from Redis on every request
(the value is compared, never trusted): nothing here can show a stale lot, a write by
any process is seen by the next read. What is saved is decoding the lot, lazy expiry,
the rules and the rendering (9.6 µs against 0.8 µs in-process; 6 µs of API CPU per read
in alternated ``bench.http`` runs, of ≈ 90 µs).

One entry per lot and tenant (a later answer replaces it), at most `limit` in all: past
that, everything is forgotten at once and the memo fills again (a dict evicting its
oldest entry one by one degrades; clearing is O(1) amortised and rare when `limit`
exceeds the stock).
"""

from __future__ import annotations

from statecharts.model import Rules

__all__ = ["LIMIT", "AvailabilityAnswers"]

LIMIT = 50_000  # entries; one holds the stored value and the JSON (≈ 0.6 KB)
_FOREVER = float("inf")

# (stored value, API user's count, rules, judged at, valid until, JSON body)
_Entry = tuple[bytes, int, Rules, int, float, bytes]


class AvailabilityAnswers:
    """The last rendered availability answer of each lot (see the module docstring)."""

    __slots__ = ("_by_tenant", "limit")

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._by_tenant: dict[str, dict[str, _Entry]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._by_tenant.values()))

    def get(
        self, tenant: str, extcode: str, raw: bytes, user: int, rules: Rules, now: int
    ) -> bytes | None:
        """The body answered for exactly this value, count and rules, if still valid."""
        lots = self._by_tenant.get(tenant)
        entry = lots.get(extcode) if lots is not None else None
        if entry is None:
            return None
        value, count, judged_rules, since, until, body = entry
        if value == raw and count == user and judged_rules is rules and since <= now < until:
            return body
        return None

    def put(
        self,
        tenant: str,
        extcode: str,
        raw: bytes,
        user: int,
        rules: Rules,
        now: int,
        next_expiry: int | None,
        body: bytes,
    ) -> None:
        """Remember `body`, judged at `now` on `raw` and `user`, until `next_expiry`."""
        lots = self._by_tenant.setdefault(tenant, {})
        if extcode not in lots and len(self) >= self.limit:
            for other in self._by_tenant.values():
                other.clear()
        until = _FOREVER if next_expiry is None else next_expiry
        lots[extcode] = (raw, user, rules, now, until, body)
