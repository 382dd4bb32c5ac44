"""`./var/run.json`: how to reach a running `koban-options run`, for the CLI.

`run` writes it at start (mode 0600 from creation, replaced atomically) and removes it at a
clean exit. A CLI command started in the same folder adopts it (the run's Redis, API and
sandbox URLs, the sandbox tenant's development keys and token) only when nothing else can
be meant: the file is this user's and nobody else may read or write it, the command's
tenant is the run's sandbox tenant (or it names none), the run is still alive, and neither
`REDIS_URL` nor any `KOBAN_OPTIONS_*` variable is set. `adopt` says in one stderr line that
it did, or why it did not; a deployment configured through its environment never adopts.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from service.config import ENV_PREFIX

__all__ = ["RUN_FILE", "Adoption", "RunInfo", "adopt", "read", "remove", "write"]

RUN_FILE = Path("var") / "run.json"
PREFIX = "koban-options:"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a running `run` tells the CLI (development values only)."""

    pid: int
    redis_url: str
    api_url: str
    api_port: int
    sandbox_url: str
    sandbox_port: int
    tenant: str
    token: str
    koban_api_key: str
    koban_user_key: str
    webhook_secret: str

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes) -> RunInfo:
        """The file's content, or ValueError naming what is wrong with it."""
        data: Any = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            wanted = int if f.type == "int" else str
            if type(value) is not wanted:
                raise ValueError(f"{f.name}: missing or not {wanted.__name__}")
            values[f.name] = value
        return cls(**values)


def write(info: RunInfo, path: Path = RUN_FILE) -> None:
    """Write `path` atomically, never readable by others, not even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, info.to_json() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: Path = RUN_FILE) -> RunInfo | None:
    """The file's content when it parses, else None (no ownership checks: see `adopt`)."""
    try:
        return RunInfo.from_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def remove(path: Path = RUN_FILE, pid: int | None = None) -> None:
    """Remove `path` if it is the one process `pid` (default: this one) wrote."""
    info = read(path)
    if info is not None and info.pid == (os.getpid() if pid is None else pid):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(frozen=True, slots=True)
class Adoption:
    """The run adopted (or None), and the one line to say about it (None: no file)."""

    info: RunInfo | None
    note: str | None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not our run
        return False
    return True


def adopt(
    tenant: str | None,
    environ: Mapping[str, str],
    path: Path = RUN_FILE,
    uid: int | None = None,
) -> Adoption:
    """Should a command about `tenant` (None: no tenant named) use the run file at `path`?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return Adoption(None, None)
    except OSError as exc:  # a symbolic link (ELOOP), a folder, no permission
        return _refused(path, f"cannot be opened ({exc.strerror})")
    try:
        st = os.fstat(fd)
        raw = os.read(fd, 1 << 16) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    exported = sorted(k for k in environ if k == "REDIS_URL" or k.upper().startswith(ENV_PREFIX))
    if exported:
        return _refused(path, f"{exported[0]} is set")
    if not stat.S_ISREG(st.st_mode):
        return _refused(path, "not a regular file")
    if st.st_uid != (os.getuid() if uid is None else uid):
        return _refused(path, "it belongs to another user")
    if st.st_mode & 0o077:
        return _refused(path, f"others may read or write it (mode {st.st_mode & 0o777:04o})")
    try:
        info = RunInfo.from_json(raw)
    except ValueError as exc:
        return _refused(path, f"unreadable ({exc})")
    if tenant is not None and tenant != info.tenant:
        return _refused(path, f"it is for tenant {info.tenant}, not {tenant}")
    if not _alive(info.pid):
        return _refused(path, f"the run that wrote it (pid {info.pid}) has ended")
    note = (
        f"{PREFIX} using {path} (the run of pid {info.pid}: tenant {info.tenant}, "
        f"Redis {info.redis_url}, API {info.api_url})"
    )
    return Adoption(info, note)


def _refused(path: Path, why: str) -> Adoption:
    return Adoption(None, f"{PREFIX} ignoring {path}: {why}")
