"""Processes for the benchmarks: figures printed as ``BENCH name value unit``, CPU time
of a process tree from /proc, the child servers of a run (stopped together), waiting
for one to answer HTTP, and py-spy profiles of running processes."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.http_config import CLOCK_TICK
from tests.support.redis_server import start_redis_server


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def run_on_private_redis(run: Callable[[str], Coroutine[Any, Any, None]]) -> None:
    """`run(url)` against a redis-server of its own (never the machine's), in a temporary
    folder; the server is stopped after."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis_server(Path(tmp))
        try:
            asyncio.run(run(url))
        finally:
            proc.terminate()
            proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_load() -> str:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return f"load average {one}, {five}, {fifteen} ({os.cpu_count()} cores)"


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a running process and of its running descendants (the
    workers of a server started with several)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue  # gone meanwhile
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat(current)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo.extend(children.get(current, ()))
    return total / CLOCK_TICK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Servers:
    """The child processes of one run; all stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: list[IO[bytes]] = []

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(cmd, cwd=self.tmp, env=env, stdout=log, stderr=log)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop on SIGTERM: killed")
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def wait_http(url: str, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"{name} did not start:\n{tail}") from None
            time.sleep(0.1)


@contextmanager
def profiling(
    pids: dict[str, int], name: str, out: Path, subprocesses: bool = False
) -> Iterator[None]:
    """py-spy record on `pids` (and their child processes, with `subprocesses`) while the
    block runs; folded stacks go to `out`/<name>-<who>.folded.txt."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        say("  py-spy not found (.venv/bin/pip install py-spy): no profile")
        yield
        return
    spies = {
        who: subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--output",
                str(out / f"{name}-{who}.folded.txt"),
                "--nonblocking",
                *(["--subprocesses"] if subprocesses else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for who, pid in pids.items()
    }
    time.sleep(1.0)
    try:
        yield
    finally:
        for who, proc in spies.items():
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            path = out / f"{name}-{who}.folded.txt"
            if path.exists():
                say(f"  profile: {path}")
            else:
                say(f"  py-spy failed on {who}: {err.decode(errors='replace')[-500:]}")
