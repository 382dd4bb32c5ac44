"""Integration fixtures: a real redis-server of our own (or REDIS_URL), a fresh tenant per
test, and the local Redis Cluster for tests marked ``cluster``.

Tests never flush a database: each test gets its own tenant name and deletes only the keys
under that tenant's hash tag (`tests.support.tenant_keys`), so REDIS_URL may point at a
shared server. Tests marked ``cluster`` run twice, on that server and on a local cluster of
three masters (`tests.support.redis_cluster`); a machine that cannot start one fails them,
unless KOBAN_TESTS_NO_CLUSTER=1 leaves the cluster runs out (said once in the header).

At the end, the fixtures that several modules split from one need, whose names no other
module here uses (`dep`, `hooks_live`, `sb`, `make_env`, `koban`, `session`, `sleep`,
`client`); their set-ups are in tests/support/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from service.koban.client import KobanClient
from service.storage.redis_client import RedisClient, connect
from service.storage.store import LotStore
from statecharts.model import Rules
from tests.support.input_fuzzing import Live, hooks_server
from tests.support.koban_client_env import FakeSleep, make_client
from tests.support.koban_scripted import ScriptedKoban
from tests.support.redis_cluster import (
    ClusterUnsupported,
    LocalCluster,
    cluster_support,
    start_redis_cluster,
)
from tests.support.redis_server import start_redis_server
from tests.support.sandbox_harness import Harness, running_sandbox
from tests.support.security_deployment import Deployment, deployment
from tests.support.tenant_keys import delete_tenant_keys
from tests.support.webhooks_env import MakeEnv, webhook_envs

NO_CLUSTER = os.environ.get("KOBAN_TESTS_NO_CLUSTER") == "1"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local Redis Cluster of three masters, started on first use and shared by the
    session. Where it cannot run, the cluster variants fail with the reason: a silent skip
    would pass a suite that never ran them."""
    reason = cluster_support()
    if reason is not None:
        pytest.fail(f"{reason} (KOBAN_TESTS_NO_CLUSTER=1 leaves the cluster runs out)")
    try:
        cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    except ClusterUnsupported as exc:
        pytest.fail(f"{exc} (KOBAN_TESTS_NO_CLUSTER=1 leaves the cluster runs out)")
    yield cluster
    cluster.stop()


BACKENDS = ("single", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``cluster`` (a module's ``pytestmark``, say) run once per backend: the
    single redis-server and the local Redis Cluster (``redis``, ``tenant`` and
    ``backend_url`` follow the ``redis_backend`` parameter)."""
    if "redis_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "cluster"
    ):
        metafunc.parametrize(
            "redis_backend", BACKENDS[:1] if NO_CLUSTER else BACKENDS, indirect=True
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``pytest.mark.cluster(single_only={"store": "mux"})``: the cluster run leaves out the
    combinations with those parameters (a transport that serves one server only)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("cluster")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("redis_backend") == "cluster" and "redis_url" in getattr(
            item, "fixturenames", ()
        ):
            # It would write to the single server while `tenant` cleans up the cluster.
            raise pytest.UsageError(f"{item.nodeid}: a cluster test takes backend_url")
        only = marker.kwargs.get("single_only", {}) if marker is not None else {}
        if params.get("redis_backend") == "cluster" and any(
            params.get(name) == value for name, value in only.items()
        ):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """``single`` (the default) or ``cluster`` (tests marked ``cluster``, second run)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def backend_url(request: pytest.FixtureRequest, redis_backend: str) -> str:
    """The URL of this test's backend: `redis_url`, or the local cluster's
    ``redis+cluster://`` URL."""
    if redis_backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def redis(backend_url: str) -> AsyncIterator[RedisClient]:
    client = connect(backend_url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant(backend_url: str) -> Iterator[str]:
    name = "t" + uuid.uuid4().hex[:12]
    yield name
    delete_tenant_keys(backend_url, name)


@pytest.fixture
def store(redis: RedisClient, tenant: str, rules: Rules) -> LotStore:
    return LotStore(redis, tenant, rules)


# --- fixtures of several modules that were one (names used nowhere else in this folder) ----


@pytest.fixture
async def dep(redis: Redis, redis_url: str, tenant: str) -> AsyncIterator[Deployment]:
    """The security tests' deployment (tests/support/security_deployment.py) on the test's
    tenant (test_reliability_security_*.py)."""
    async with deployment(redis, redis_url, tenant) as running:
        yield running


@pytest.fixture(scope="module")
def hooks_live(redis_url: str) -> Iterator[Live]:
    """The bad-input tests' live server, seeded (tests/support/input_fuzzing.py); one per
    module (test_reliability_input_forms.py, test_reliability_input_limits.py)."""
    with hooks_server(redis_url) as live:
        yield live


@pytest.fixture
async def sb() -> AsyncIterator[Harness]:
    """The Koban sandbox on loopback (tests/support/sandbox_harness.py; test_sandbox*.py)."""
    async with running_sandbox() as harness:
        yield harness


@pytest.fixture(params=["doc", "generic"])
async def make_env(
    request: pytest.FixtureRequest, redis: Redis, tenant: str
) -> AsyncIterator[MakeEnv]:
    """Koban's webhook routes on the test's tenant, in both date profiles
    (tests/support/webhooks_env.py; test_webhooks*.py)."""
    async with webhook_envs(redis, tenant, request.param) as make:
        yield make


@pytest.fixture
async def koban() -> AsyncIterator[ScriptedKoban]:
    """A scripted Koban on 127.0.0.1 (test_koban_client*.py)."""
    async with ScriptedKoban() as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def client(koban: ScriptedKoban, session: aiohttp.ClientSession, sleep: FakeSleep) -> KobanClient:
    """A KobanClient of `koban`, its backoff recorded by `sleep` (test_koban_client*.py)."""
    return make_client(session, koban.base_url, sleep)
