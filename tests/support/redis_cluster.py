"""A local Redis Cluster of three masters for the tests: no Docker, three child processes.

What it sets up and checks, in detail: docs/testing.md, `redis_cluster.py`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import redis as redis_sync

from tests.support.redis_server import server_command

MASTERS = 3


@dataclass
class LocalCluster:
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The service's cluster URL (``redis_client.connect``): any node seeds it."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis_sync.Redis:
        return redis_sync.Redis(port=port, socket_connect_timeout=1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class ClusterUnsupported(Exception):
    """This machine cannot start a local cluster (the tests skip with this reason)."""


def cluster_support() -> str | None:
    """None when the programs a local cluster needs are here, else why not (the skip
    reason). Whether redis-server itself can run in cluster mode shows when the first node
    starts (`start_redis_cluster` raises `ClusterUnsupported`)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        return "redis-server or redis-cli not found (run .ci/ensure-redis)"
    usage = subprocess.run([cli, "--cluster", "help"], capture_output=True, timeout=10)
    if b"create" not in usage.stdout + usage.stderr:
        return "redis-cli has no --cluster create (redis-cli 5 or later needed)"
    return None


def _free_ports(n: int) -> list[int]:
    """`n` free loopback ports whose cluster bus port (port + 10 000) is free too."""
    found: list[int] = []
    while len(found) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port + 10000 > 65535 or port in found:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
        found.append(port)
    return found


def _start_node(binary: str, directory: Path, port: int) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        server_command(
            binary,
            port,
            directory,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(directory / "nodes.conf"),
            "--cluster-node-timeout",
            "5000",
            "--logfile",
            str(directory / "redis.log"),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis_sync.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Redis Cluster: {what} within {timeout} s")
        time.sleep(0.05)


def _node_up(cluster: LocalCluster, port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether a node answers, in cluster mode; `ClusterUnsupported` when it cannot be one."""
    if proc.poll() is not None:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "cluster" in text.lower() and ("Bad directive" in text or "FATAL" in text):
            raise ClusterUnsupported(f"redis-server refused --cluster-enabled yes: {text[-300:]}")
        raise RuntimeError(f"redis-server on {port} exited: {text[-300:]}")
    with cluster.node(port) as node:
        info = node.info("cluster")
    if not info.get("cluster_enabled"):
        raise ClusterUnsupported("redis-server runs without cluster support (cluster_enabled:0)")
    return True


def _ready(cluster: LocalCluster) -> bool:
    """Every node sees the three masters and every slot served: ``cluster_state:ok``."""
    for port in cluster.ports:
        with cluster.node(port) as node:
            info = node.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text or f"cluster_known_nodes:{MASTERS}" not in text:
            return False
        if "cluster_slots_assigned:16384" not in text:
            return False
    return True


def start_redis_cluster(directory: Path) -> LocalCluster:
    """Three masters on free ports under `directory`, joined, every slot served."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert binary is not None and cli is not None
    for _attempt in range(3):
        ports = _free_ports(MASTERS)
        cluster = LocalCluster(ports)
        try:
            for port in ports:
                cluster.procs.append(_start_node(binary, directory / str(port), port))
            for port, proc in zip(ports, cluster.procs, strict=True):
                log = directory / str(port) / "redis.log"
                _wait_until(partial(_node_up, cluster, port, proc, log), f"node {port} up", 10)
            create = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    "redis-cli --cluster create failed: "
                    + (create.stdout + create.stderr).decode(errors="replace")[-2000:]
                )

            _wait_until(partial(_ready, cluster), "cluster_state:ok on every node")
            return cluster
        except ClusterUnsupported:
            cluster.stop()
            raise
        except Exception:
            cluster.stop()
            if _attempt == 2:
                raise
    raise RuntimeError("could not start a local Redis Cluster")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].endswith("+cluster")


def masters(seed: redis_sync.Redis) -> list[tuple[str, int]]:
    """(host, port) of every master serving slots, from CLUSTER NODES on `seed`."""
    raw = seed.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 9 and "master" in parts[2].split(","):
            host, _, rest = parts[1].partition(":")
            out.append((host, int(rest.split("@")[0])))
    return sorted(out)


def sync_nodes(url: str) -> list[redis_sync.Redis]:
    """Plain synchronous clients: the server of a ``redis://`` URL, or every master of a
    ``redis+cluster://`` one (the caller closes them)."""
    if not is_cluster_url(url):
        return [redis_sync.Redis.from_url(url)]
    seed = redis_sync.Redis.from_url(url.replace("+cluster", "", 1))
    try:
        return [redis_sync.Redis(host=h, port=p) for h, p in masters(seed)]
    finally:
        seed.close()
