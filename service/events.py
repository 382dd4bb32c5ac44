"""The one CloudEvents 1.0 builder (§3): every entry of the stream and of a lot's history."""

from __future__ import annotations

import orjson

from statecharts.model import DomainEvent
from statecharts.ticks import to_iso

TYPE_PREFIX = "koban."


def event_id(extcode: str, sequence: int) -> str:
    """Deterministic and unique within the tenant's source: the lot and its event counter."""
    return f"{extcode}-{sequence:012d}"


def cloud_event(
    tenant: str, extcode: str, event: DomainEvent, sequence: int, lot_version: int
) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id(extcode, sequence),
            "source": f"koban-options/{tenant}",
            "type": TYPE_PREFIX + event.type,
            "subject": extcode,
            "time": to_iso(event.time),
            "datacontenttype": "application/json",
            "partitionkey": extcode,
            "sequence": f"{sequence:012d}",
            "lotversion": lot_version,
            "data": event.data,
        }
    )
