"""The tests' one way to start a private redis-server: loopback, a free port, nothing saved
unless asked (``extra`` options, e.g. AOF), data in a directory of the test's own.

`start_redis_server` picks the port; `RedisProcess` keeps it so a test can SIGKILL the
server and start it again on the same port and data (a crash and a restart). The local
Redis Cluster (`tests.support.redis_cluster`) builds its nodes' command lines here too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis as redis_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run .ci/ensure-redis or set REDIS_URL")
    return binary


def server_command(binary: str, port: int, directory: Path, *extra: str) -> list[str]:
    """A private redis-server's command line (loopback, nothing saved, data in
    `directory`), for single servers and the local cluster's nodes."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--protected-mode",
        "no",
        *extra,
    ]


def _launch(port: int, directory: Path, extra: tuple[str, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        server_command(redis_binary(), port, directory, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _answers(proc: subprocess.Popen[bytes], port: int, deadline_s: float) -> bool:
    """Wait until the server answers PING (after loading its AOF: LOADING is a
    ConnectionError too); False when it exits or the deadline passes."""
    client = redis_sync.Redis(port=port, socket_connect_timeout=0.2)
    try:
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up and proc.poll() is None:
            try:
                client.ping()
                return True
            except redis_sync.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def start_redis_server(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port; returns the process and its URL.
    A port taken between the probe and the bind is retried on another one."""
    for _ in range(5):
        port = free_port()
        proc = _launch(port, directory, extra)
        if _answers(proc, port, 10.0):
            return proc, f"redis://127.0.0.1:{port}/0"
        proc.kill()
        proc.wait()
    raise RuntimeError("could not start redis-server")


class RedisProcess:
    """A private redis-server that can be SIGKILLed and started again on the same port and
    data directory, with the same `extra` options (e.g. AOF: ``"--appendonly", "yes",
    "--appendfsync", "always"``)."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.extra = extra
        self.proc, self.url = start_redis_server(directory, *extra)
        port = urlparse(self.url).port
        assert port is not None
        self.port = port

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last fsync; only what the AOF already holds survives."""
        self.proc.kill()
        self.proc.wait(10)

    def start_again(self, deadline_s: float = 60.0) -> None:
        """Same port, directory and options as the first start, then wait until it answers
        PING, i.e. it has loaded its AOF."""
        self.proc = _launch(self.port, self.directory, self.extra)
        if not _answers(self.proc, self.port, deadline_s):
            raise redis_sync.ConnectionError(f"redis-server on {self.port} did not come back")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
