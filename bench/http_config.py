"""The HTTP bench's set-up: the bench tenant, its tokens and Koban keys, and the sizes and
durations, each overridable by an environment variable ``KOBAN_BENCH_HTTP_<NAME>``
(docs/bench-http.md lists them)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
READ_TOKEN = "bench-read-token-0123456789"
WRITE_TOKEN = "bench-write-token-0123456789"
SANDBOX_API_KEY = "bench-sandbox-api-key"
SANDBOX_USER_KEY = "bench-sandbox-user-key"
BASE = f"/v1/tenants/{TENANT}"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"KOBAN_BENCH_HTTP_{name}", str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(f"KOBAN_BENCH_HTTP_{name}", str(default)))


CONNECTIONS = _env_int("CONNECTIONS", 32)
DURATION = _env_float("DURATION", 8.0)
WARMUP = _env_float("WARMUP", 2.0)
N_LOTS = _env_int("LOTS", 20_000)
N_SWEEP = _env_int("SWEEP", 100_000)
LOADGEN = os.environ.get("KOBAN_BENCH_HTTP_LOADGEN", "auto")
PROFILE_DIR = os.environ.get("KOBAN_BENCH_HTTP_PROFILE")
PHASES = os.environ.get(
    "KOBAN_BENCH_HTTP_PHASES", "hello,hello-redis,hello-mux,availability,place,sweep"
).split(",")
ROUNDS = _env_int("ROUNDS", 3)
# One API process per core, as deployed (`koban-options api --workers N`); hello too.
WORKERS = _env_int("WORKERS", os.cpu_count() or 1)
# Each placement takes a fresh sandbox lot, warm-ups included, so the stock follows the
# rounds: enough lots for a rate per API worker above what one reaches (docs/bench-http.md).
PLACE_CEILING_PER_WORKER = 2_000
N_PLACE = _env_int(
    "PLACE_LOTS", int(ROUNDS * (WARMUP + DURATION) * PLACE_CEILING_PER_WORKER * WORKERS)
)
LOAD_BATCH = 500
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
