"""Half-hour expiry ticks, ISO-8601 durations and instants.

Koban expires options only at :00 and :30. For every tenant zone the service accepts
(offsets that are multiples of 30 minutes, see `check_zone`), those wall-clock instants are
exactly the UNIX times that are multiples of 1800 s, so tick arithmetic is integer
arithmetic on UNIX seconds and never needs the zone. The zone matters only when a duration
with a calendar part (years, months, days) is added to an instant.

Pure: standard library only, no I/O, no clock. Time is UNIX seconds everywhere.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "TICK_SECONDS",
    "IsoDuration",
    "add_duration",
    "ceil_tick",
    "check_zone",
    "deadline_from_lifetime",
    "effective_expiry",
    "latest_tick",
    "next_tick",
    "parse_duration",
    "parse_instant",
    "prolongation_cap",
    "ticks_between",
    "to_iso",
]

TICK_SECONDS = 1800

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
# Timestamps above this are milliseconds (Koban sends both kinds).
_MILLISECONDS_ABOVE = 1e11


def _whole_seconds_up(ts: float) -> int:
    """ceil(ts) as an int; refuses NaN and infinities with a ValueError."""
    if isinstance(ts, int):
        return ts
    if not math.isfinite(ts):
        raise ValueError(f"not a finite timestamp: {ts!r}")
    return math.ceil(ts)


def _whole_seconds_down(ts: float) -> int:
    if isinstance(ts, int):
        return ts
    if not math.isfinite(ts):
        raise ValueError(f"not a finite timestamp: {ts!r}")
    return math.floor(ts)


def ceil_tick(ts: float) -> int:
    """Smallest tick >= ts; a ts exactly on a tick stays there.

    Ticks are integers, so the smallest tick >= ts is the smallest tick >= ceil(ts): doing
    the division on integers keeps it exact for fractional seconds (10:29:59.5 -> 10:30).
    """
    return -(-_whole_seconds_up(ts) // TICK_SECONDS) * TICK_SECONDS


def next_tick(ts: float) -> int:
    """Smallest tick strictly after ts."""
    return latest_tick(ts) + TICK_SECONDS


def latest_tick(ts: float) -> int:
    """Greatest tick <= ts."""
    return _whole_seconds_down(ts) // TICK_SECONDS * TICK_SECONDS


def ticks_between(after: int, upto: int) -> list[int]:
    """Ticks t with after < t <= upto, in order (empty when upto <= after)."""
    return list(range(next_tick(after), latest_tick(upto) + 1, TICK_SECONDS))


def effective_expiry(deadline: float) -> int:
    """The tick at which an option with this deadline expires (a deadline on a tick stays)."""
    return ceil_tick(deadline)


# --------------------------------------------------------------------------- durations


@dataclass(frozen=True)
class IsoDuration:
    """An ISO-8601 duration split into a calendar part and an exact elapsed-time part.

    `years`, `months` and `days` are calendar units, added on the wall clock of a zone
    (weeks are folded into days); `seconds` holds hours, minutes and seconds as exact
    elapsed seconds, so PT26H and P1DT2H differ across a DST change.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("years", "months", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"IsoDuration.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"IsoDuration.{name} must not be negative, got {value}")
        seconds = self.seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"IsoDuration.seconds must be a number, got {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"IsoDuration.seconds must be finite and >= 0, got {seconds!r}")
        object.__setattr__(self, "seconds", float(seconds))

    @property
    def has_calendar_part(self) -> bool:
        return bool(self.years or self.months or self.days)

    @property
    def is_zero(self) -> bool:
        return not self.has_calendar_part and self.seconds == 0

    def fixed_seconds(self) -> float:
        """Length in seconds counting a day as 24 h, for TTL-like settings.

        Years and months have no fixed length: ValueError when present.
        """
        if self.years or self.months:
            raise ValueError(f"{self} has years or months, which have no fixed length")
        return self.days * 86400 + self.seconds

    def __str__(self) -> str:
        date = "".join(
            f"{value}{unit}"
            for value, unit in ((self.years, "Y"), (self.months, "M"), (self.days, "D"))
            if value
        )
        time = ""
        if self.seconds.is_integer():
            whole = int(self.seconds)
            hours, rest = divmod(whole, 3600)
            minutes, secs = divmod(rest, 60)
            time = "".join(
                f"{value}{unit}"
                for value, unit in ((hours, "H"), (minutes, "M"), (secs, "S"))
                if value
            )
        else:
            # Kept as plain seconds: splitting a float into H/M/S is not exact, and
            # str() must parse back to the same value.
            # Shortest round-tripping digits, written positionally (no exponent).
            time = f"{Decimal(repr(self.seconds)):f}S"
        if not date and not time:
            return "PT0S"
        return "P" + date + ("T" + time if time else "")


_NUMBER = r"\d+(?:[.,]\d+)?"
_DURATION_RE = re.compile(
    rf"P(?:(?P<Y>{_NUMBER})Y)?(?:(?P<Mo>{_NUMBER})M)?(?:(?P<W>{_NUMBER})W)?(?:(?P<D>{_NUMBER})D)?"
    rf"(?:(?P<T>T)(?:(?P<H>{_NUMBER})H)?(?:(?P<Mi>{_NUMBER})M)?(?:(?P<S>{_NUMBER})S)?)?"
)
_COMPONENTS = ("Y", "Mo", "W", "D", "H", "Mi", "S")
_SECONDS_PER = {"H": 3600, "Mi": 60, "S": 1}


def parse_duration(text: str) -> IsoDuration:
    """Parse an ISO-8601 duration "PnYnMnWnDTnHnMnS".

    A decimal fraction is accepted only on the last component, and only when that is
    hours, minutes or seconds (a fraction of a calendar day or month has no meaning).
    Negative durations, "P", "PT" and anything else are refused with a ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"an ISO-8601 duration must be a string, got {type(text).__name__}")
    candidate = text.strip().upper()
    if candidate.startswith("-"):
        raise ValueError(f"negative durations are not allowed: {text!r}")
    match = _DURATION_RE.fullmatch(candidate)
    if match is None:
        raise ValueError(f"not an ISO-8601 duration: {text!r} (expected e.g. P2D, PT30M, P1DT2H)")
    present = [name for name in _COMPONENTS if match.group(name) is not None]
    if match.group("T") and not any(name in _SECONDS_PER for name in present):
        raise ValueError(f"ISO-8601 duration with 'T' but no hours, minutes or seconds: {text!r}")
    if not present:
        raise ValueError(f"ISO-8601 duration without any component: {text!r}")
    values: dict[str, Decimal] = {}
    for name in present:
        raw = match.group(name).replace(",", ".")
        if "." in raw:
            if name != present[-1]:
                raise ValueError(f"only the last component may have a fraction: {text!r}")
            if name not in _SECONDS_PER:
                raise ValueError(
                    f"fractions are allowed only on hours, minutes or seconds: {text!r}"
                )
        values[name] = Decimal(raw)
    seconds = sum(
        (values.get(name, Decimal(0)) * per for name, per in _SECONDS_PER.items()),
        Decimal(0),
    )
    return IsoDuration(
        years=int(values.get("Y", 0)),
        months=int(values.get("Mo", 0)),
        days=int(values.get("W", 0)) * 7 + int(values.get("D", 0)),
        seconds=float(seconds),
    )


def _epoch_seconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_SECOND


def add_duration(instant: float, duration: IsoDuration, zone: ZoneInfo) -> float:
    """`instant` + `duration`, the calendar part on the wall clock of `zone`.

    Years and months are added together (a month end clamps: Jan 31 + P1M = Feb 28/29),
    then days. The resulting wall time is resolved with fold=0: in a DST gap it moves
    forward by the gap (02:30 that does not exist -> 03:30), in an overlap it is the first
    occurrence. The time part (H, M, S) is then added as exact elapsed seconds.
    """
    if not duration.has_calendar_part:
        # No wall-clock round trip: it would move an instant in the second occurrence of
        # an overlap back to the first one.
        return float(instant) + duration.seconds
    whole = _whole_seconds_down(instant)
    fraction = float(instant) - whole
    local = datetime.fromtimestamp(whole, zone).replace(tzinfo=None)
    month_index = local.month - 1 + duration.months
    year = local.year + duration.years + month_index // 12
    month = month_index % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    wall = local.replace(year=year, month=month, day=day) + timedelta(days=duration.days)
    resolved = _epoch_seconds(wall.replace(tzinfo=zone, fold=0))
    return resolved + fraction + duration.seconds


def deadline_from_lifetime(placed_at: int, lifetime: IsoDuration, zone: ZoneInfo) -> int:
    """The deadline of an option placed at `placed_at`, rounded up to the second."""
    return math.ceil(add_duration(placed_at, lifetime, zone))


def prolongation_cap(
    original_deadline: int, max_prolongation: IsoDuration | None, zone: ZoneInfo
) -> int | None:
    """Latest allowed new deadline (inclusive), or None when the tenant sets no cap."""
    if max_prolongation is None:
        return None
    return math.ceil(add_duration(original_deadline, max_prolongation, zone))


# --------------------------------------------------------------------------- zones

_ZONE_SCAN_FROM = 0  # 1970-01-01T00:00:00Z
_ZONE_SCAN_TO = 4102444800  # 2100-01-01T00:00:00Z


def _offset_seconds(zone: ZoneInfo, ts: int) -> int:
    offset = datetime.fromtimestamp(ts, zone).utcoffset()
    if offset is None:  # pragma: no cover - ZoneInfo always answers
        raise ValueError(f"zone {zone.key} gives no UTC offset at {to_iso(ts)}")
    return int(offset.total_seconds())


def _format_offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def _zone_samples() -> list[int]:
    samples = [
        calendar.timegm((year, month, day, 0, 0, 0))
        for year in range(1970, 2100)
        for month in range(1, 13)
        for day in (1, 16)
    ]
    samples.append(_ZONE_SCAN_TO)
    return samples


@lru_cache(maxsize=64)
def _first_bad_offset(zone: ZoneInfo) -> tuple[int, int] | None:
    """(offset, instant) of the first offset not a multiple of 30 min, or None."""

    def bad(ts: int, offset: int) -> tuple[int, int] | None:
        return None if offset % TICK_SECONDS == 0 else (offset, ts)

    def scan(lo: int, lo_off: int, hi: int, hi_off: int) -> tuple[int, int] | None:
        # Both ends are checked already; bisect towards every change in between so the
        # offsets on both sides of each transition are seen.
        if lo_off == hi_off or hi - lo <= 1:
            return None
        mid = (lo + hi) // 2
        mid_off = _offset_seconds(zone, mid)
        return bad(mid, mid_off) or scan(lo, lo_off, mid, mid_off) or scan(mid, mid_off, hi, hi_off)

    previous: tuple[int, int] | None = None
    for ts in _zone_samples():
        offset = _offset_seconds(zone, ts)
        found = bad(ts, offset)
        if found is None and previous is not None:
            found = scan(previous[0], previous[1], ts, offset)
        if found is not None:
            return found
        previous = (ts, offset)
    return None


def check_zone(zone: ZoneInfo) -> None:
    """Refuse a zone whose UTC offset is ever (1970-2100) not a multiple of 30 minutes.

    Ticks are UNIX multiples of 1800 s only when the zone's offsets are multiples of
    30 minutes; otherwise :00/:30 local would fall between them.
    """
    found = _first_bad_offset(zone)
    if found is not None:
        offset, ts = found
        raise ValueError(
            f"offset {_format_offset(offset)} is not a multiple of 30 minutes "
            f"(zone {zone.key}, in use at {to_iso(ts)})"
        )


# --------------------------------------------------------------------------- instants


@lru_cache(maxsize=4096)
def to_iso(ts: float) -> str:
    """UTC ISO-8601 with Z: "2026-03-29T01:30:00Z" (micro-seconds only when non-zero).

    Memoised: the same instants (ticks, deadlines) are rendered over and over, and building
    a ``datetime`` costs many times a cache hit (docs/benchmarks.md)."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


_NUMERIC_RE = re.compile(r"[+-]?\d+(?:\.\d*)?")


def parse_instant(value: str | int | float) -> float:
    """UNIX seconds from an ISO-8601 instant with an offset or Z, or from a UNIX timestamp.

    Numbers (and strings of digits, as form-encoded webhooks carry them) whose magnitude is
    above 1e11 are milliseconds. A naive ISO time (no offset) is refused: its zone would be
    a guess.
    """
    if isinstance(value, bool):
        raise ValueError(f"not an instant: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if _NUMERIC_RE.fullmatch(text):
            return parse_instant(float(text))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 instant: {value!r}") from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"ISO-8601 instant without a UTC offset or Z: {value!r}")
        return moment.timestamp()
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"not a finite timestamp: {value!r}")
        if abs(number) > _MILLISECONDS_ABOVE:
            # Integer division first keeps whole-second millisecond values exact.
            if isinstance(value, int):
                return value // 1000 + (value % 1000) / 1000
            return number / 1000
        return number
    raise ValueError(f"not an instant: {value!r}")
