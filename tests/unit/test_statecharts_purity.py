"""The statecharts package does no I/O: it imports only pure stdlib and `statemachine`.

Every module's source is parsed (imports inside functions included), not imported, so a
forbidden import hidden in a branch that never runs is caught too.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import sys
from pathlib import Path

import statecharts

FORBIDDEN = frozenset(
    {
        # project and third-party I/O
        "service",
        "redis",
        "aiohttp",
        "apscheduler",
        "requests",
        "httpx",
        # stdlib I/O, processes, networking, event loops, dynamic imports
        "asyncio",
        "socket",
        "ssl",
        "select",
        "selectors",
        "urllib",
        "http",
        "ftplib",
        "smtplib",
        "subprocess",
        "multiprocessing",
        "threading",
        "signal",
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "glob",
        "sqlite3",
        "pickle",
        "shelve",
        "logging",
        "importlib",
        "builtins",
    }
)
ALLOWED_THIRD_PARTY = frozenset({"statemachine", "statecharts", "__future__"})


def _modules() -> list[tuple[str, Path]]:
    found = [("statecharts", Path(statecharts.__file__))]
    for info in pkgutil.walk_packages(statecharts.__path__, prefix="statecharts."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        found.append((info.name, Path(spec.origin)))
    return found


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
            else:
                base = module.split(".")
                base = base if is_package else base[:-1]
                up = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                names.add(".".join([*up, node.module] if node.module else up) or "<above-root>")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"__import__", "open", "exec", "eval"}
        ):
            names.add(f"builtins.{node.func.id}")
    return names


def test_the_package_has_the_expected_modules() -> None:
    names = {name for name, _ in _modules()}
    assert {"statecharts.lot_chart", "statecharts.compiled", "statecharts.decide"} <= names


def test_statecharts_imports_no_io() -> None:
    offenders: list[str] = []
    for module, path in _modules():
        for name in sorted(_imports(module, path)):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                offenders.append(f"{module}: {name}")
            elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
                offenders.append(f"{module}: {name} (not stdlib nor statemachine)")
    assert offenders == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "def f():\n    import subprocess\n    from ..service import x\n    open('f')\n",
        encoding="utf-8",
    )
    found = _imports("statecharts.probe", source)
    assert {"subprocess", "service", "builtins.open"} <= found
