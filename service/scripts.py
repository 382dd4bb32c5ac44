"""The Lua scripts of the store and the sweep, each with `lib.lua` (what both share) ahead."""

from __future__ import annotations

from importlib import resources


def lua_script(name: str) -> str:
    """`service/<name>`, preceded by `service/lib.lua`."""
    files = resources.files("service")
    return files.joinpath("lib.lua").read_text() + files.joinpath(name).read_text()
