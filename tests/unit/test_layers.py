"""The layers hold: only `service/storage/` talks to Redis, and the domain stays pure.

Sources are parsed, not imported, so an import inside a function or a branch that never
runs counts too. The rules:

1. No module outside `service/storage/` imports `redis` (the client, its exceptions, its
   types). The store's failures are `service.storage.errors`.
2. Outside `service/storage/`, nothing calls a method of a Redis client: no
   ``<anything>.redis.<method>(…)``, and a client held in a variable named ``redis`` is only
   closed (``aclose``). Composition code (`serve`, `run`, `cli`, the scheduler daemon, the
   API app) may hold a client, made by `service.storage.redis_client.connect`, to pass it
   down to the stores and close it; every read or write goes through `service.storage`.
3. `statecharts/` imports nothing of `service`, `redis`, `aiohttp` or `apscheduler`
   (`tests/unit/test_statecharts_purity.py` holds it to the standard library and
   `statemachine`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORAGE = ROOT / "service" / "storage"

ALLOWED_CALLS_ON_A_CLIENT = frozenset({"aclose"})
DOMAIN_FORBIDDEN = frozenset({"service", "redis", "aiohttp", "apscheduler"})


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _outside_storage() -> list[Path]:
    return [p for p in _sources("service") if STORAGE not in p.parents]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_tops(tree: ast.Module) -> set[str]:
    """The top-level package of every absolute import in `tree`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def redis_calls(tree: ast.Module) -> list[str]:
    """Calls of a Redis client's methods: ``x.redis.m(…)`` or ``redis.m(…)`` (bar
    `ALLOWED_CALLS_ON_A_CLIENT` on a held client)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = node.func.value
        method = node.func.attr
        if isinstance(target, ast.Attribute) and target.attr == "redis":
            found.append(f"line {node.lineno}: .redis.{method}()")
        elif (
            isinstance(target, ast.Name)
            and target.id == "redis"
            and method not in ALLOWED_CALLS_ON_A_CLIENT
        ):
            found.append(f"line {node.lineno}: redis.{method}()")
    return found


def _offences(path: Path) -> list[str]:
    tree = _tree(path)
    out = ["imports redis" for _ in ["redis"] if "redis" in imported_tops(tree)]
    return out + redis_calls(tree)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_only_storage_talks_to_redis() -> None:
    offenders = {_rel(p): found for p in _outside_storage() if (found := _offences(p))}
    assert offenders == {}


def test_the_domain_imports_no_service_nor_io_framework() -> None:
    offenders = {
        _rel(p): sorted(bad)
        for p in _sources("statecharts")
        if (bad := imported_tops(_tree(p)) & DOMAIN_FORBIDDEN)
    }
    assert offenders == {}


def test_the_checks_see_what_they_forbid() -> None:
    probe = ast.parse(
        "def f(store, redis):\n"
        "    from redis.exceptions import RedisError\n"
        "    store.redis.get('k')\n"
        "    redis.set('k', 1)\n"
        "    redis.aclose()\n"
    )
    assert "redis" in imported_tops(probe)
    assert redis_calls(probe) == ["line 3: .redis.get()", "line 4: redis.set()"]


def test_storage_is_where_the_client_is_used() -> None:
    # The rule is not vacuous: the storage package does hold the Redis calls.
    assert any(redis_calls(_tree(p)) for p in _sources("service/storage"))
    assert any("redis" in imported_tops(_tree(p)) for p in _sources("service/storage"))
