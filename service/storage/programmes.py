"""The tenant's programmes as Koban's ``ncDealProcess/GetAll`` last listed them (replaced
whole by each stock sync)."""

from __future__ import annotations

from typing import cast

import orjson

from service.storage.store import LotStore

__all__ = ["load_programmes", "save_programmes"]


def _key(store: LotStore) -> str:
    return f"{store.keys.prefix}programmes"


async def save_programmes(store: LotStore, programmes: list[tuple[str, str | None]]) -> None:
    """Replace the list with (code, label) pairs, in Koban's order."""
    body = [{"code": code, "label": label} for code, label in programmes]
    await store.redis.set(_key(store), orjson.dumps(body))


async def load_programmes(store: LotStore) -> list[dict[str, str | None]]:
    raw = cast(bytes | None, await store.redis.get(_key(store)))
    return [] if raw is None else cast(list[dict[str, str | None]], orjson.loads(raw))
