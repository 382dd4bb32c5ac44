"""Commands packed in RESP, the Redis wire format, for the sweep's big script calls.

What hiredis' ``pack_command`` writes (a test holds them equal), but faster for the
thousands of arguments of one sweep chunk, and with a section-by-section builder
(`append_bulks`) so a caller can pack lists it already holds without copying them.
"""

from __future__ import annotations

from typing import Any

_HEADS = [b"$%d\r\n" % n for n in range(4096)]
_CRLF = b"\r\n"


def pack(args: list[Any]) -> bytes:
    """One command. One bytes object: asyncio sends a list one piece at a time."""
    out = [b"*%d\r\n" % len(args)]
    append_bulks(out, [encode_arg(a) for a in args])
    return b"".join(out)


def encode_arg(a: Any) -> bytes:
    """An argument's bytes as redis-py sends them (bytes, str as UTF-8, int in decimal)."""
    if a.__class__ is bytes:
        return a
    if a.__class__ is str:
        return a.encode()
    if a.__class__ is int:
        return b"%d" % a
    raise TypeError(f"cannot send {a!r} to Redis")


def append_bulks(out: list[bytes], items: list[bytes]) -> None:
    """Append `items` to `out` as RESP bulk strings (joined once, at the end)."""
    heads, top = _HEADS, len(_HEADS)
    for x in items:
        n = len(x)
        out += (heads[n] if n < top else b"$%d\r\n" % n, x, _CRLF)
