"""What the KobanClient tests share (no tests here): the keys, Koban's paths, usual replies,
a sleep that records the backoff instead of waiting, and `make_client`. The fixtures
(`koban`, `session`, `sleep`, `client`) are in tests/integration/conftest.py.

Shared by tests/integration/test_koban_client*.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from service.koban.client import KobanClient

API_KEY = "api-key-123"
USER_KEY = "user-key-456"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class FakeSleep:
    """Records the backoff delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def make_client(
    session: aiohttp.ClientSession, base_url: str, sleep: FakeSleep, **kw: Any
) -> KobanClient:
    kw.setdefault("rate_per_s", 1000.0)
    return KobanClient(session, base_url, API_KEY, USER_KEY, sleep=sleep, **kw)
