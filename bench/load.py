"""Load generators of the HTTP bench, each in a process of its own: `wrk` with a Lua
script per target, or a Python aiohttp client (``python -m bench.http loadgen``); both
print one ``WRK {json}`` line that `LoadGen.finish` reads into a `Result`."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.http_config import (
    BASE,
    CONNECTIONS,
    LOADGEN,
    N_LOTS,
    READ_TOKEN,
    ROOT,
    WRITE_TOKEN,
)
from bench.procs import children_cpu, cpu_seconds, say


@dataclass(slots=True)
class Target:
    """What one measured run sends: GET over a cycle of paths, or distinct placements."""

    kind: str  # "hello" | "hello-redis" | "availability" | "place"
    start: int = 0  # place: index of the first lot


@dataclass(slots=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    bad: int  # responses with an unexpected status, plus socket errors
    last_bad: str
    loadgen_cpu_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # server processes' CPU seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _availability_path(i: int) -> str:
    return f"{BASE}/lots/A{i:06d}/availability"


HELLOS = ("hello", "hello-redis", "hello-mux")
_STEP = 7919  # a prime: consecutive requests hit lots far apart


def _wrk_script(target: Target, threads: int) -> str:
    common = """
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
bad = 0
last_bad = ""
function response(status, headers, body)
  if status ~= EXPECTED then
    bad = bad + 1
    last_bad = tostring(status) .. " " .. string.sub(body or "", 1, 160)
  end
end
function done(summary, latency, requests)
  local bad_total = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local last = ""
  for _, t in ipairs(threads) do
    bad_total = bad_total + t:get("bad")
    if t:get("last_bad") ~= "" then last = t:get("last_bad") end
  end
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"bad": %d, "last_bad": %q}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, bad_total, last))
end
"""
    if target.kind in HELLOS:
        expected = 200
        body = f"""
function request() return wrk.format("GET", "/{target.kind}") end
"""
    elif target.kind == "availability":
        expected = 200
        body = f"""
wrk.headers["Authorization"] = "Bearer {READ_TOKEN}"
local n = {N_LOTS}
local i = 0
function init(args) i = (id * 104729) % n end
function request()
  i = (i + {_STEP}) % n
  return wrk.format("GET", string.format("{BASE}/lots/A%06d/availability", i))
end
"""
    else:
        expected = 201
        body = f"""
wrk.headers["Authorization"] = "Bearer {WRITE_TOKEN}"
wrk.headers["Content-Type"] = "application/json"
local k = 0
local first = {target.start}
function request()
  local idx = first + id + k * {threads}
  k = k + 1
  return wrk.format("POST", string.format("{BASE}/lots/P%06d/options", idx), nil,
    string.format('{{"thirdGuid": "bp-%06d"}}', idx))
end
"""
    return common.replace("EXPECTED", str(expected)) + body


class LoadGen:
    """Runs one measured load in a separate process and returns its figures."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.threads = 1

    def describe(self) -> str:
        if self.kind == "wrk":
            version = subprocess.run(
                ["wrk", "--version"], capture_output=True, text=True, check=False
            ).stdout.split("[")[0]
            return f"{version.strip()} ({self.threads} thread, its own process)"
        return "Python aiohttp client (python -m bench.http loadgen, its own process)"

    def start(self, base_url: str, target: Target, seconds: float) -> subprocess.Popen[str]:
        if self.kind == "wrk":
            script = self.tmp / f"{target.kind}-{target.start}.lua"
            script.write_text(_wrk_script(target, self.threads))
            cmd = [
                "wrk",
                f"-t{self.threads}",
                f"-c{CONNECTIONS}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                base_url,
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "bench.http",
                "loadgen",
                base_url,
                target.kind,
                str(seconds),
                str(target.start),
            ]
        return subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    @staticmethod
    def finish(proc: subprocess.Popen[str]) -> Result:
        out, err = proc.communicate(timeout=600)
        line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
        if line is None:
            raise RuntimeError(f"load generator failed ({proc.returncode}): {out}\n{err}")
        data = json.loads(line[4:])
        return Result(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            bad=data["bad"],
            last_bad=data["last_bad"],
        )

    def run(self, base_url: str, target: Target, seconds: float, pids: dict[str, int]) -> Result:
        cpu0, before = children_cpu(), {name: cpu_seconds(pid) for name, pid in pids.items()}
        result = self.finish(self.start(base_url, target, seconds))
        result.loadgen_cpu_s = children_cpu() - cpu0
        result.cpu_s = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        return result


async def python_loadgen(base_url: str, kind: str, seconds: float, start: int) -> None:
    """The fallback load generator: CONNECTIONS workers on one keep-alive pool."""
    import aiohttp

    latencies: list[float] = []
    bad = 0
    last_bad = ""
    counter = 0
    expected = 201 if kind == "place" else 200
    headers = {}
    if kind == "availability":
        headers["Authorization"] = f"Bearer {READ_TOKEN}"
    elif kind == "place":
        headers["Authorization"] = f"Bearer {WRITE_TOKEN}"
    deadline = time.perf_counter() + seconds

    def stop() -> None:
        nonlocal deadline
        deadline = 0.0

    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop)

    async def worker(session: aiohttp.ClientSession, wid: int) -> None:
        nonlocal bad, last_bad, counter
        i = (wid * 104729) % N_LOTS
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                if kind in HELLOS:
                    request = session.get(f"{base_url}/{kind}")
                elif kind == "availability":
                    i = (i + _STEP) % N_LOTS
                    request = session.get(base_url + _availability_path(i), headers=headers)
                else:
                    idx = start + counter
                    counter += 1
                    request = session.post(
                        f"{base_url}{BASE}/lots/P{idx:06d}/options",
                        json={"thirdGuid": f"bp-{idx:06d}"},
                        headers=headers,
                    )
                async with request as answer:
                    body = await answer.read()
                    if answer.status != expected:
                        bad += 1
                        last_bad = f"{answer.status} {body[:160]!r}"
            except aiohttp.ClientError as exc:
                bad += 1
                last_bad = repr(exc)
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, w) for w in range(CONNECTIONS)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> int:
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6)

    line = {
        "requests": len(latencies),
        "duration_us": round(elapsed * 1e6),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": round(latencies[-1] * 1e6),
        "bad": bad,
        "last_bad": last_bad,
    }
    print("WRK " + json.dumps(line), flush=True)


def choose_loadgen(tmp: Path) -> LoadGen:
    have_wrk = shutil.which("wrk") is not None
    if LOADGEN == "wrk" and not have_wrk:
        raise SystemExit("KOBAN_BENCH_HTTP_LOADGEN=wrk but wrk is not installed")
    if LOADGEN == "python" or not have_wrk:
        if not have_wrk and LOADGEN != "python":
            say(
                "  wrk not found (apt-get install wrk): falling back to the Python client, "
                "which is itself near its limit at the bare handler's rate, so hello_rps "
                "and the ratio understate the ceiling"
            )
        return LoadGen("python", tmp)
    return LoadGen("wrk", tmp)


def report_phase(label: str, r: Result, extra: str = "") -> None:
    def pct(seconds: float) -> str:
        return f"{seconds / r.seconds * 100:.0f} %" if r.seconds else "-"

    cpu = ", ".join(f"{name} {pct(s)}" for name, s in r.cpu_s.items())
    per = ", ".join(
        f"{name} {s / r.requests * 1e6:.0f}" for name, s in r.cpu_s.items() if r.requests
    )
    say(
        f"  {label}: {r.requests} requests in {r.seconds:.1f} s, p50 {r.p50_ms:.1f} ms, "
        f"p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms, "
        f"{r.bad} bad; CPU (% of a core): {cpu}, load generator {pct(r.loadgen_cpu_s)}; "
        f"CPU µs per request: {per}{extra}"
    )
    if r.bad:
        say(f"    last bad answer: {r.last_bad}")
