"""`./var/run.json`: written private, adopted only when nothing else can be meant, and
each refusal said in one stderr-ready line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.entrypoints import run_file
from service.entrypoints.run_file import RunInfo, adopt

NO_ENV: dict[str, str] = {"PATH": "/usr/bin", "HOME": "/root"}


def info(pid: int | None = None, tenant: str = "demo") -> RunInfo:
    return RunInfo(
        pid=os.getpid() if pid is None else pid,
        redis_url="unix:///tmp/x/redis.sock",
        api_url="http://127.0.0.1:18080",
        api_port=18080,
        sandbox_url="http://127.0.0.1:18081/api/v1",
        sandbox_port=18081,
        tenant=tenant,
        token="dev-admin-token",
        koban_api_key="sandbox-api-key",
        koban_user_key="sandbox-user-key",
        webhook_secret="dev-webhook-secret",
    )


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "run.json"
    run_file.write(info(), path)
    return path


def test_written_private_and_read_back(written: Path) -> None:
    assert written.stat().st_mode & 0o777 == 0o600
    assert run_file.read(written) == info()
    assert [p.name for p in written.parent.iterdir()] == ["run.json"]  # no temp file left


def test_written_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run_file.write(info(), tmp_path / "run.json")
    finally:
        os.umask(old)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o600


def test_adopted_for_its_tenant_or_no_tenant_with_one_line(written: Path) -> None:
    for tenant in ("demo", None):
        adoption = adopt(tenant, NO_ENV, written)
        assert adoption.info == info()
        assert adoption.note is not None and "\n" not in adoption.note
        assert adoption.note.startswith(f"koban-options: using {written}")
        assert "dev-admin-token" not in adoption.note and "sandbox-api-key" not in adoption.note


def test_no_file_no_word(tmp_path: Path) -> None:
    assert adopt("demo", NO_ENV, tmp_path / "var" / "run.json") == run_file.Adoption(None, None)


def refused(adoption: run_file.Adoption, why: str) -> None:
    assert adoption.info is None
    assert adoption.note is not None and "\n" not in adoption.note
    assert adoption.note.startswith("koban-options: ignoring "), adoption.note
    assert why in adoption.note, adoption.note


@pytest.mark.parametrize(
    "variable", ["REDIS_URL", "KOBAN_OPTIONS_REDIS_URL", "KOBAN_OPTIONS_TOKEN", "koban_options_x"]
)
def test_refused_when_the_environment_configures(written: Path, variable: str) -> None:
    refused(adopt("demo", {**NO_ENV, variable: "x"}, written), f"{variable} is set")


def test_refused_when_another_user_owns_it(written: Path) -> None:
    refused(adopt("demo", NO_ENV, written, uid=os.getuid() + 1), "belongs to another user")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_refused_when_others_may_read_or_write_it(written: Path, mode: int) -> None:
    written.chmod(mode)
    refused(adopt("demo", NO_ENV, written), f"mode {mode:04o}")


def test_refused_for_another_tenant(written: Path) -> None:
    refused(adopt("prod", NO_ENV, written), "for tenant demo, not prod")


def test_refused_when_the_run_has_ended(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    path = tmp_path / "run.json"
    run_file.write(info(pid=int(done.stdout)), path)
    refused(adopt("demo", NO_ENV, path), f"(pid {int(done.stdout)}) has ended")


def test_refused_when_unreadable_or_a_link(tmp_path: Path, written: Path) -> None:
    bad = tmp_path / "bad.json"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"pid": "1"}')
    os.close(fd)
    refused(adopt("demo", NO_ENV, bad), "unreadable (pid: missing or not int)")
    link = tmp_path / "link.json"
    link.symlink_to(written)
    refused(adopt("demo", NO_ENV, link), "cannot be opened")


def test_removed_only_by_the_run_that_wrote_it(written: Path) -> None:
    run_file.remove(written, pid=os.getpid() + 1)
    assert written.exists()
    run_file.remove(written)
    assert not written.exists()
    run_file.remove(written)  # already gone: nothing to do
