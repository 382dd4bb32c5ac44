"""The Lua scripts of the store and the sweep, each with `lib.lua` (what both share) ahead."""

from __future__ import annotations

from importlib import resources


def lua_script(name: str) -> str:
    """`service/storage/<name>`, preceded by `lib.lua`."""
    files = resources.files("service.storage")
    return files.joinpath("lib.lua").read_text() + files.joinpath(name).read_text()
