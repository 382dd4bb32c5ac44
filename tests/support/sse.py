"""A client's view of one server-sent event stream (the API's /events)."""

from __future__ import annotations

import asyncio

import aiohttp


class Sse:
    """A client's view of one event stream."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, count: int, within: float = 5.0) -> list[dict[str, str]]:
        events: list[dict[str, str]] = []
        current: dict[str, str] = {}
        async with asyncio.timeout(within):
            while len(events) < count:
                line = await self.response.content.readline()
                if not line:
                    raise EOFError("stream ended")
                text = line.decode().rstrip("\r\n")
                if not text:
                    if current:
                        events.append(current)
                        current = {}
                    continue
                if text.startswith(":"):
                    self.comments.append(text)
                    continue
                field, _, value = text.partition(":")
                current[field] = value.removeprefix(" ")
        return events

    async def silent(self, seconds: float) -> bool:
        """True when nothing but comments arrives for `seconds`."""
        try:
            await self.next(1, within=seconds)
        except TimeoutError:
            return True
        return False
