"""Instructions per request, counted by valgrind's callgrind: the API's cost in a figure
the machine's other work barely moves (wall time and CPU time swing by tens of per cent on
a shared two-core machine), so alternated runs of two builds tell about 1 % apart.

The API (one process) and the bare hello server run under ``valgrind --tool=callgrind``
with counting off; after start-up and a warm-up, counting is switched on
(``callgrind_control``), N requests are sent one after the other on one keep-alive
connection, and counting is switched off. Figures: ``availability_instructions`` and
``hello_instructions`` per request, and their ratio (what ``availability_ratio`` measures
in requests per second, without the noise). Sizes: KOBAN_BENCH_INSTR_REQUESTS (2 000),
KOBAN_BENCH_INSTR_WARMUP (300). Needs valgrind; prints nothing but a note without it.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.http_config import READ_TOKEN, TENANT
from bench.procs import bench, free_port, say
from tests.support.redis_server import start_redis_server

N_REQUESTS = int(os.environ.get("KOBAN_BENCH_INSTR_REQUESTS", "2000"))
WARMUP = int(os.environ.get("KOBAN_BENCH_INSTR_WARMUP", "300"))
LOTS = 2000
STEP = 7919  # a prime: consecutive requests read lots far apart, as the HTTP bench does


class Counted:
    """A server under callgrind, counting only between `on` and `off`."""

    def __init__(
        self, argv: list[str], env: dict[str, str], out: Path, port: int, probe: str
    ) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                *argv,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        deadline = time.monotonic() + 600
        while True:
            try:
                self.get(probe, {})
                return
            except (OSError, http.client.HTTPException):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[2:5]} did not start under valgrind") from None
                self.conn.close()
                time.sleep(1)

    def get(self, path: str, headers: dict[str, str]) -> None:
        self.conn.request("GET", path, headers=headers)
        answer = self.conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:200]!r}")

    def switch(self, on: bool, ping: Callable[[], None]) -> None:
        """callgrind_control answers once the process runs again: keep it busy meanwhile."""
        control = subprocess.Popen(
            ["callgrind_control", "-i", "on" if on else "off", str(self.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while control.poll() is None:
            ping()
            time.sleep(0.05)

    def total(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(300)
        self.conn.close()
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {self.out}")


def per_request(server: Counted, path_of: Callable[[int], str], headers: dict[str, str]) -> float:
    for i in range(WARMUP):
        server.get(path_of(i), headers)
    ping = lambda: server.get(path_of(0), headers)  # noqa: E731
    server.switch(True, ping)
    for i in range(N_REQUESTS):
        server.get(path_of(WARMUP + i), headers)
    server.switch(False, ping)
    return server.total() / N_REQUESTS


def run(tmp: Path) -> None:
    os.environ["KOBAN_BENCH_HTTP_LOTS"] = str(LOTS)  # read when bench.servers is imported
    os.environ["KOBAN_BENCH_HTTP_SWEEP"] = "1"
    from bench.servers import child_env, load_store, tenants_toml

    redis, redis_url = start_redis_server(tmp)
    try:
        tenants = tmp / "tenants.toml"
        tenants.write_text(tenants_toml(free_port()))  # no Koban call is measured
        env = child_env(redis_url, tenants, 0)
        asyncio.run(load_store(env, int(time.time())))
        py = sys.executable
        port = free_port()
        api_argv = [py, "-m", "service.entrypoints.cli", "api", "--host", "127.0.0.1"]
        api = Counted([*api_argv, "--port", str(port)], env, tmp / "api.out", port, "/healthz")
        auth = {"Authorization": f"Bearer {READ_TOKEN}"}
        avail = per_request(
            api, lambda i: f"/v1/tenants/{TENANT}/lots/A{i * STEP % LOTS:06d}/availability", auth
        )
        port = free_port()
        hello_argv = [py, "-m", "bench.http", "hello", "--redis", redis_url, "--port", str(port)]
        hello = Counted(hello_argv, env, tmp / "hello.out", port, "/hello")
        bare = per_request(hello, lambda i: "/hello", {})
    finally:
        redis.terminate()
        redis.wait()
    say(f"instructions over {N_REQUESTS} requests each, after {WARMUP} warm-up requests")
    bench("availability_instructions", avail, "instr/request")
    bench("hello_instructions", bare, "instr/request")
    bench("availability_instructions_ratio", avail / bare, "x")


def main() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        say("valgrind not installed (apt-get install valgrind): no instruction counts")
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp))


if __name__ == "__main__":
    main()
