"""The one CloudEvents 1.0 builder, and the compact form kept in a lot's history.

Domain events carry times as UNIX seconds; they become ISO-8601 UTC strings here, at the
edge. The stream holds full CloudEvents JSON (what consumers read); a lot's history keeps a
compact entry per event (derivable attributes dropped, known keys shortened, times as
integers) that `expand_history_entry` turns back into exactly the same CloudEvent. Every
event names the JSON Schema of its `data` in `dataschema`: an absolute URI under the
service's `public_base_url`, served by the API (`SCHEMA_PATH` + type).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from statecharts.model import DomainEvent
from statecharts.ticks import to_iso

TYPE_PREFIX = "koban."
DEFAULT_PUBLIC_BASE_URL = "http://127.0.0.1:8080"
SCHEMA_PATH = "/v1/schemas/events/"  # + the event type, e.g. koban.option.placed
# `data` keys holding instants: integers inside, ISO strings on the wire.
TIME_KEYS = frozenset({"placedAt", "deadline", "effectiveExpiry", "at", "endDate"})
_SHORT = {
    "optionId": "i",
    "rank": "r",
    "thirdGuid": "t",
    "partnerGuid": "p",
    "placedAt": "pa",
    "deadline": "d",
    "effectiveExpiry": "e",
    "deadlineSource": "s",
    "prolonged": "pr",
    "actor": "a",
    "program": "pg",
    "label": "lb",
    "status": "st",
}
_LONG = {v: k for k, v in _SHORT.items()}


@lru_cache(maxsize=1 << 16)
def iso(ts: int) -> str:
    """Ticks and deadlines repeat a lot across options: format each instant once."""
    return to_iso(ts)


@lru_cache(maxsize=1024)
def source(tenant: str) -> str:
    return f"koban-options/{tenant}"


@lru_cache(maxsize=1024)
def dataschema(base_url: str, type_: str) -> str:
    """The absolute URI of the JSON Schema of `type_`'s data (type without its prefix)."""
    return f"{base_url.rstrip('/')}{SCHEMA_PATH}{TYPE_PREFIX}{type_}"


def event_id(extcode: str, sequence: int) -> str:
    """Deterministic and unique within the tenant's source: the lot and its event counter."""
    return f"{extcode}-{sequence:012d}"


def _wire_data(data: dict[str, object]) -> dict[str, object]:
    return {k: iso(v) if k in TIME_KEYS and isinstance(v, int) else v for k, v in data.items()}


def _envelope(
    tenant: str,
    extcode: str,
    type_: str,
    time: int,
    sequence: int,
    version: int,
    data: object,
    base_url: str,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id(extcode, sequence),
        "source": source(tenant),
        "type": TYPE_PREFIX + type_,
        "subject": extcode,
        "time": iso(time),
        "datacontenttype": "application/json",
        "dataschema": dataschema(base_url, type_),
        "partitionkey": extcode,
        "sequence": f"{sequence:012d}",
        "lotversion": version,
        "data": data,
    }


def cloud_event(
    tenant: str,
    extcode: str,
    event: DomainEvent,
    sequence: int,
    lot_version: int,
    base_url: str = DEFAULT_PUBLIC_BASE_URL,
) -> bytes:
    data = _wire_data(event.data)
    return orjson.dumps(
        _envelope(tenant, extcode, event.type, event.time, sequence, lot_version, data, base_url)
    )


def history_entry(event: DomainEvent, sequence: int, lot_version: int) -> bytes:
    short = _SHORT.get
    data = {short(k, k): v for k, v in event.data.items()}
    return orjson.dumps([sequence, lot_version, event.type, event.time, data])


def expand_history_entry(
    tenant: str, extcode: str, entry: bytes, base_url: str = DEFAULT_PUBLIC_BASE_URL
) -> dict[str, Any]:
    sequence, version, type_, time, short = orjson.loads(entry)
    data = _wire_data(expand_data(short))
    return _envelope(tenant, extcode, type_, time, sequence, version, data, base_url)


def expand_data(short: dict[str, Any]) -> dict[str, Any]:
    """A stored history entry's data with the long key names."""
    return {_LONG.get(k, k): v for k, v in short.items()}
