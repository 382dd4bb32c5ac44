"""Opaque cursors of the API's listings: base64url of a paging position ``[score, member]``
(`service.storage.paging`)."""

from __future__ import annotations

import base64
import binascii

import orjson

from service.entrypoints.api.errors import validation_failed
from service.storage.paging import Position

__all__ = ["Position", "decode_cursor", "encode_cursor"]


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(position))).decode().rstrip("=")


def decode_cursor(text: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and (value[1] is None or isinstance(value[1], str))
    ):
        return value[0], value[1]
    raise validation_failed([{"field": "cursor", "message": "not a cursor of this listing"}])
