"""A tenant's keys in Redis, dumped, to prove a refused request wrote nothing."""

from __future__ import annotations

from typing import Any

import redis as redis_sync


def snapshot(client: redis_sync.Redis, tenant: str, dbsize: bool = True) -> dict[str, Any]:
    """Every key under the tenant's hash tag: its DUMP and whether it has a TTL; and (unless
    `dbsize` is false) the database's key count, so a key written outside the tag shows."""
    keys = sorted(client.scan_iter(match=f"kol:{{{tenant}}}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    out = pipe.execute()
    values = {key: (out[2 * i], out[2 * i + 1] != -1) for i, key in enumerate(keys)}
    return {"dbsize": client.dbsize() if dbsize else None, "keys": values}


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, readably (empty: nothing changed)."""
    out = [f"dbsize {before['dbsize']} -> {after['dbsize']}"] * (
        before["dbsize"] != after["dbsize"]
    )
    for key in sorted(set(before["keys"]) | set(after["keys"])):
        if before["keys"].get(key) != after["keys"].get(key):
            what = (
                "added"
                if key not in before["keys"]
                else "removed"
                if key not in after["keys"]
                else "changed"
            )
            out.append(f"{key.decode(errors='replace')} {what}")
    return out
