"""`/metrics` right under `api --workers N`: whichever worker takes the scrape answers for all.

Each worker also serves its app on a private unix socket in the supervisor's directory;
the worker scraped asks its siblings for their own figures and merges them: the
per-process counters (requests, Koban calls) are summed, so `rate()` sees one series;
process and GC figures keep one series per worker (label `worker`); the figures read from
Redis (active options, drift, Redis up) are the scraped worker's, identical in all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["LOCAL_QUERY", "WORKERS_KEY", "Workers", "merged_exposition"]

# A sibling asked with this query answers its own figures only (no fan-out back).
LOCAL_QUERY = "worker=local"
SIBLING_TIMEOUT_S = 2.0
SUMMED = frozenset(
    {
        "koban_options_http_requests",
        "koban_options_http_request_duration_seconds",
        "koban_options_koban_calls",
    }
)
PER_WORKER_PREFIXES = ("process_", "python_gc_", "python_info")


@dataclass(frozen=True, slots=True)
class Workers:
    """This worker's index and the directory where every worker has its socket."""

    directory: Path
    index: int

    def socket(self, index: int | None = None) -> Path:
        return self.directory / f"{self.index if index is None else index}.sock"

    def siblings(self) -> list[tuple[int, Path]]:
        out = []
        for path in sorted(self.directory.glob("*.sock")):
            with contextlib.suppress(ValueError):
                index = int(path.stem)
                if index != self.index:
                    out.append((index, path))
        return out


WORKERS_KEY = web.AppKey("api_workers", Workers)


async def _sibling_text(path: Path) -> str | None:
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(f"http://worker/metrics?{LOCAL_QUERY}") as response,
        ):
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None  # a worker starting or stopping: the scrape goes on without it


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge(by_worker: Iterable[tuple[int, str]], own: int) -> bytes:
    """One exposition from each worker's own (`own` is the scraped worker's index)."""
    merged: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in by_worker:
        for family in text_string_to_metric_families(text):
            name = family.name
            if name in SUMMED:
                target = merged.setdefault(name, Metric(name, family.documentation, family.type))
                acc = sums.setdefault(name, {})
                for s in family.samples:
                    if s.name.endswith("_created"):
                        continue  # a start instant: summing it means nothing
                    key = (s.name, tuple(sorted(s.labels.items())))
                    acc[key] = acc.get(key, 0.0) + s.value
            elif name.startswith(PER_WORKER_PREFIXES):
                target = merged.setdefault(name, Metric(name, family.documentation, family.type))
                for s in family.samples:
                    labels = {**s.labels, "worker": str(index)}
                    target.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
            elif index == own:
                merged[name] = family
    for name, acc in sums.items():
        for (sample, pairs), value in acc.items():
            merged[name].add_sample(sample, dict(pairs), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(merged.values())))
    return generate_latest(registry)


async def merged_exposition(workers: Workers, own_text: bytes) -> bytes:
    siblings = workers.siblings()
    texts = await asyncio.gather(*(_sibling_text(path) for _, path in siblings))
    parts = [(workers.index, own_text.decode())]
    parts += [(i, t) for (i, _), t in zip(siblings, texts, strict=True) if t is not None]
    return merge(parts, workers.index)
