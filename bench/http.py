"""`make bench` (HTTP): the internal API's reads and writes over real HTTP on loopback.

Every server runs in its own process (redis-server, the Koban sandbox, ``koban-options
api``, a bare aiohttp "hello" handler: the ceiling) and a separate load generator keeps
keep-alive connections busy. hello, availability and placements alternate for a few
rounds, each keeping its best; then availability runs during a sweep of due options.
Figures print as ``BENCH <name> <value> <unit>``; what each means, and the environment
variables that size a run, are in docs/bench-http.md. ``python -m bench.http <child>``
runs one of the child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.http_config import (
    CONNECTIONS,
    DURATION,
    N_LOTS,
    N_PLACE,
    N_SWEEP,
    PHASES,
    PROFILE_DIR,
    ROUNDS,
    TENANT,
    WARMUP,
    WORKERS,
)
from bench.load import (
    HELLOS,
    LoadGen,
    Result,
    Target,
    choose_loadgen,
    python_loadgen,
    report_phase,
)
from bench.procs import (
    Servers,
    bench,
    children_cpu,
    cpu_seconds,
    free_port,
    machine_load,
    profiling,
    say,
    wait_http,
)
from bench.servers import (
    child_env,
    load_store,
    serve_hello,
    serve_sandbox,
    sweep_worker,
    tenants_toml,
)

Figure = tuple[str, float, str]


@dataclass(slots=True)
class Stack:
    """The child servers of one run, where they answer, and their environment."""

    tmp: Path
    env: dict[str, str]
    api: subprocess.Popen[bytes]
    sandbox: subprocess.Popen[bytes]
    hello: subprocess.Popen[bytes]
    redis_pid: int
    api_url: str
    hello_url: str

    @property
    def pids(self) -> dict[str, int]:
        """The processes whose CPU a service figure reports."""
        return {"api": self.api.pid, "sandbox": self.sandbox.pid, "redis": self.redis_pid}


def start_stack(tmp: Path, servers: Servers, redis_pid: int, redis_url: str) -> Stack:
    """The sandbox (with N_PLACE lots for placements), the API and hello, answering."""
    sandbox_port, api_port, hello_port = free_port(), free_port(), free_port()
    tenants_file = tmp / "tenants.toml"
    tenants_file.write_text(tenants_toml(sandbox_port))
    env = child_env(redis_url, tenants_file, sandbox_port)
    py = sys.executable
    lots = ["--lots", str(N_PLACE)]
    sandbox = servers.spawn(
        "sandbox", [py, "-m", "bench.http", "sandbox", "--port", str(sandbox_port), *lots], env
    )
    workers = ["--workers", str(WORKERS)] if WORKERS > 1 else []
    api_cmd = ["-m", "service.entrypoints.cli", "api", "--host", "127.0.0.1"]
    api = servers.spawn("api", [py, *api_cmd, "--port", str(api_port), *workers], env)
    hello_cmd = ["-m", "bench.http", "hello", "--redis", redis_url]
    hello = servers.spawn("hello", [py, *hello_cmd, "--port", str(hello_port), *workers], env)
    stack = Stack(
        tmp,
        env,
        api,
        sandbox,
        hello,
        redis_pid,
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{hello_port}",
    )
    sandbox_url = f"http://127.0.0.1:{sandbox_port}/_sandbox/clock"
    wait_http(sandbox_url, sandbox, "sandbox", tmp / "sandbox.log")
    wait_http(stack.api_url + "/healthz", api, "api", tmp / "api.log")
    wait_http(stack.hello_url + "/hello", hello, "hello", tmp / "hello.log")
    return stack


def load_stock(stack: Stack) -> int:
    """The sandbox's lots synced into the API's store, then the availability and sweep
    lots loaded; returns the tick at which the sweep lots' options are due."""
    sync = subprocess.run(
        [sys.executable, "-m", "service.entrypoints.cli", "sync", "--tenant", TENANT, "--full"],
        cwd=stack.tmp,
        env=stack.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if sync.returncode != 0:
        raise RuntimeError(f"sync failed: {sync.stdout}\n{sync.stderr}")
    say(f"  stock sync from the sandbox: {sync.stdout.strip().splitlines()[-1]}")
    tick, seconds = asyncio.run(load_store(stack.env, int(time.time())))
    say(f"  store loaded ({N_LOTS} + {N_SWEEP} lots) in {seconds:.1f} s")
    return tick


class Measure:
    """One measured load after its warm-up; placements never reuse a sandbox lot."""

    def __init__(self, loadgen: LoadGen) -> None:
        self.loadgen = loadgen
        self.next_place = 0  # sandbox lots P… are used once each, warm-ups included

    def __call__(self, url: str, kind: str, label: str, watch: dict[str, int]) -> Result:
        for length in [WARMUP, DURATION] if WARMUP > 0 else [DURATION]:
            result = self.loadgen.run(url, Target(kind, self.next_place), length, watch)
            if kind == "place":  # requests still in flight at the end are not counted
                self.next_place += result.requests + CONNECTIONS
        report_phase(label, result)
        return result


def compare_python_client(stack: Stack, loadgen: LoadGen) -> None:
    """The Python client against the same bare handler: why wrk is the generator."""
    if "hello" not in PHASES or loadgen.kind != "wrk":
        return
    calib = LoadGen("python", stack.tmp).run(
        stack.hello_url, Target("hello"), min(DURATION, 5.0), {"hello": stack.hello.pid}
    )
    say(
        f"  for comparison, the Python aiohttp client against hello: "
        f"{calib.rps:.0f} req/s (p99 {calib.p99_ms:.2f} ms), its own CPU "
        f"{calib.loadgen_cpu_s / calib.seconds * 100:.0f} % of a core"
    )


def best_rounds(stack: Stack, measure: Measure) -> tuple[dict[str, Result], list[Result]]:
    """Each kind's best round (fewest failed requests, then throughput), and every round.

    The machine is shared: the kinds alternate for ROUNDS rounds and each keeps its best,
    since others' load only ever lowers a throughput."""
    hello = {"hello": stack.hello.pid}
    kinds = [
        (kind, label, url, watch)
        for kind, label, url, watch in (
            ("hello", "hello", stack.hello_url, hello),
            ("hello-redis", "hello + one GET (redis-py)", stack.hello_url, hello),
            ("hello-mux", "hello + one GET (MuxReader)", stack.hello_url, hello),
            ("availability", "availability", stack.api_url, stack.pids),
            ("place", "place", stack.api_url, stack.pids),
        )
        if kind in PHASES
    ]
    best: dict[str, Result] = {}
    results: list[Result] = []
    for round_ in range(1, ROUNDS + 1):
        for kind, label, url, watch in kinds:
            r = measure(url, kind, f"round {round_}, {label}", watch)
            results.append(r)
            # A round with failed requests (placements out of lots, say) never wins.
            if kind not in best or (r.bad, -r.rps) < (best[kind].bad, -best[kind].rps):
                best[kind] = r
    return best, results


def figures_of(best: dict[str, Result]) -> list[Figure]:
    figures: list[Figure] = []
    hello_r = best.get("hello")
    avail = best.get("availability")
    place = best.get("place")
    if hello_r is not None:
        figures += [
            ("hello_rps", hello_r.rps, "req/s"),
            ("hello_p50_ms", hello_r.p50_ms, "ms"),
            ("hello_p99_ms", hello_r.p99_ms, "ms"),
        ]
    for kind, name in (("hello-redis", "hello_redis"), ("hello-mux", "hello_mux")):
        if kind in best:
            figures += [
                (f"{name}_rps", best[kind].rps, "req/s"),
                (f"{name}_p99_ms", best[kind].p99_ms, "ms"),
            ]
    if avail is not None:
        figures += [
            ("availability_rps", avail.rps, "req/s"),
            ("availability_p50_ms", avail.p50_ms, "ms"),
            ("availability_p99_ms", avail.p99_ms, "ms"),
            ("availability_api_cpu_us", avail.cpu_s["api"] / avail.requests * 1e6, "µs/req"),
        ]
        if hello_r is not None:
            figures.append(("availability_ratio", avail.rps / hello_r.rps, "x"))
    if place is not None:
        figures += [
            ("place_rps", place.rps, "req/s"),
            ("place_p50_ms", place.p50_ms, "ms"),
            ("place_p99_ms", place.p99_ms, "ms"),
        ]
    return figures


def availability_during_sweep(stack: Stack, tick: int, loadgen: LoadGen) -> tuple[Result, float]:
    """Availability load from the moment a sweep worker starts `sweep_expiries` until it ends."""
    pids = stack.pids
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.http", "sweep", str(tick)],
        cwd=stack.tmp,
        env=stack.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    if worker.stdout.readline().strip() != "READY":
        raise RuntimeError("sweep worker did not start")
    cpu0, before = children_cpu(), {name: cpu_seconds(pid) for name, pid in pids.items()}
    worker.stdin.write("go\n")
    worker.stdin.flush()
    gen = loadgen.start(stack.api_url, Target("availability"), 600)
    done = json.loads(worker.stdout.readline())
    worker.wait(60)
    sweeper_cpu = children_cpu() - cpu0  # the worker is reaped, the generator not yet
    gen.send_signal(signal.SIGINT)
    during = loadgen.finish(gen)
    during.loadgen_cpu_s = children_cpu() - cpu0 - sweeper_cpu
    during.cpu_s = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    if done["expired"] != N_SWEEP:
        raise RuntimeError(f"the sweep expired {done['expired']} options, not {N_SWEEP}")
    report_phase(
        "availability during the sweep",
        during,
        f"; the sweep of {done['expired']} options took {done['seconds']:.1f} s "
        f"({done['expired'] / done['seconds']:.0f}/s)",
    )
    return during, float(done["seconds"])


def profile(stack: Stack, measure: Measure) -> None:
    """One more availability run and one more placement run under py-spy."""
    if not PROFILE_DIR:
        return
    out, several = Path(PROFILE_DIR), WORKERS > 1
    with profiling({"api": stack.api.pid}, "availability", out, several):
        measure(stack.api_url, "availability", "availability (profiled)", stack.pids)
    pids = {"api": stack.api.pid, "sandbox": stack.sandbox.pid}
    with profiling(pids, "place", out, several):
        measure(stack.api_url, "place", "place (profiled)", stack.pids)


def run(tmp: Path) -> None:
    from tests.support.redis_server import start_redis_server

    say(
        f"http bench: {CONNECTIONS} keep-alive connections from a separate load-generator "
        f"process; redis-server, Koban sandbox (zero latency), koban-options api and a bare "
        f"aiohttp hello server each in its own process on loopback"
        + (
            f" (the API and hello as {WORKERS} worker processes each, SO_REUSEPORT)"
            if WORKERS > 1
            else ""
        )
        + f"; {N_LOTS} lots for "
        f"availability, {N_PLACE} sandbox lots for placements, {N_SWEEP} options due for "
        f"the sweep; {DURATION:g} s per figure after {WARMUP:g} s of warm-up"
    )
    say(f"  machine at start: {machine_load()}")
    loadgen = choose_loadgen(tmp)
    say(f"  load generator: {loadgen.describe()}")
    servers = Servers(tmp)
    redis_proc, redis_url = start_redis_server(tmp)
    try:
        stack = start_stack(tmp, servers, redis_proc.pid, redis_url)
        tick = load_stock(stack)
        measure = Measure(loadgen)
        compare_python_client(stack, loadgen)
        best, results = best_rounds(stack, measure)
        figures = figures_of(best)
        if "sweep" in PHASES:
            during, sweep_s = availability_during_sweep(stack, tick, loadgen)
            results.append(during)
            figures += [
                ("availability_rps_during_sweep", during.rps, "req/s"),
                ("availability_p99_during_sweep_ms", during.p99_ms, "ms"),
                ("sweep_during_http_s", sweep_s, "s"),
            ]
        say(f"  machine at end: {machine_load()}")
        for name, value, unit in figures:
            bench(name, value, unit)
        bad = sum(r.bad for r in results)
        if bad:
            say(f"  WARNING: {bad} requests did not get the expected status (see above)")
        profile(stack, measure)
    finally:
        servers.stop()
        redis_proc.terminate()
        redis_proc.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.http")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("hello", help="(child) the bare aiohttp handler")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--workers", type=int, default=1, help="processes on the port, as the API")
    p.add_argument("--reuse-port", action="store_true")
    # What the API's supervisor gives each worker (its /metrics gathering); hello has none.
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workers-dir", help=argparse.SUPPRESS)
    p = sub.add_parser("sandbox", help="(child) the Koban sandbox with bench stock")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lots", type=int, required=True)
    p = sub.add_parser("sweep", help="(child) sweep_expiries on the bench tenant after a line")
    p.add_argument("tick", type=int)
    p = sub.add_parser("loadgen", help="(child) the Python load generator")
    p.add_argument("url")
    p.add_argument("kind", choices=[*HELLOS, "availability", "place"])
    p.add_argument("seconds", type=float)
    p.add_argument("start", type=int)
    args = parser.parse_args(argv)
    if args.command == "hello":
        if args.workers > 1:  # the same supervisor as `koban-options api --workers N`
            from service.entrypoints.serve import supervise

            command = [sys.executable, "-m", "bench.http", "hello", "--port", str(args.port)]
            command += ["--redis", args.redis, "--reuse-port"]
            raise SystemExit(asyncio.run(supervise(command, args.workers)))
        asyncio.run(serve_hello(args.port, args.redis, args.reuse_port))
    elif args.command == "sandbox":
        asyncio.run(serve_sandbox(args.port, args.lots))
    elif args.command == "sweep":
        asyncio.run(sweep_worker(args.tick))
    elif args.command == "loadgen":
        asyncio.run(python_loadgen(args.url, args.kind, args.seconds, args.start))
    else:
        with tempfile.TemporaryDirectory(prefix="koban-bench-http-") as tmp:
            run(Path(tmp))


if __name__ == "__main__":
    main()
