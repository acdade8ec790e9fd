"""Session-wide fixtures: one test bed per test session, each server started on first use;
and the scene's fixtures (tests/scene/fixtures.py) for every test package.

With KEYFERRY_BED_REQUIRED=1 (set by tests/run and CI) a server that cannot be built or
installed fails the test instead of skipping it, so CI never passes on skipped bed tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import structlog

from tests.bed import Bed, BedError, ServerUnavailable
from tests.bed.cluster import Cluster
from tests.bed.jaeger import JaegerServer
from tests.bed.mariadb import MariaDBServer
from tests.bed.moto import MotoServer
from tests.bed.postgres import PostgresServer
from tests.bed.provider import PROVIDER_VAR, provider_name
from tests.bed.vault import CONTAINER_FLAVOUR, FLAVOUR, VaultServer

# The scene's fixtures (broker, broker_config, clock, approle, orders_db, ...), by name.
pytest_plugins = ["tests.scene.fixtures"]

T = TypeVar("T")
REQUIRED = os.environ.get("KEYFERRY_BED_REQUIRED") == "1"


def need(start: Callable[[], T]) -> T:
    """Start a server; a missing one skips the test locally and fails it when required."""
    try:
        return start()
    except ServerUnavailable as exc:
        if REQUIRED:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _logs_on_stderr() -> Iterator[None]:
    """In-process brokers log to stderr, as `keyferry broker serve` does: structlog's default
    (stdout, looked up when a logger is made) would land in a CliRunner's captured output."""
    if structlog.is_configured():
        yield
        return
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def bed() -> Iterator[Bed]:
    the_bed = Bed()
    yield the_bed
    the_bed.stop()


@pytest.fixture(scope="session")
def vault(bed: Bed) -> VaultServer:
    return need(bed.vault)


@pytest.fixture(scope="session")
def vault_persistent(bed: Bed) -> VaultServer:
    return need(bed.vault_persistent)


@pytest.fixture(scope="session")
def postgres(bed: Bed) -> PostgresServer:
    return need(bed.postgres)


@pytest.fixture(scope="session")
def mariadb(bed: Bed) -> MariaDBServer:
    return need(bed.mariadb)


@pytest.fixture(scope="session")
def moto(bed: Bed) -> MotoServer:
    return need(bed.moto)


@pytest.fixture(scope="session")
def jaeger(bed: Bed) -> JaegerServer:
    """The trace receiver (tests/bed/jaeger.py), started on first use."""
    return need(bed.jaeger)


# Run before every other test: the demo starts its own bed with cluster a's node, and one node
# runs per machine, so placed among the node's users (alphabetically between
# test_chart_node.py and test_node.py) it stopped this session's node and the next module
# started it again (about 15 s, and as long again to stop it, on the loaded CI machine).
RUN_FIRST = (Path(__file__).parent / "integration" / "test_demo.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path not in RUN_FIRST)  # stable: the rest keep their order


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        provider = provider_name()
    except BedError as exc:  # the `bed` fixture fails with the same message
        provider = f"invalid: {exc}"
    flavour = CONTAINER_FLAVOUR if provider == "containers" else FLAVOUR
    return [
        f"keyferry bed: Vault server = {flavour}; servers required = {REQUIRED}; "
        f"{PROVIDER_VAR} = {provider}"
    ]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """When servers are required, a skipped test is a failure: CI must not pass on skips."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if REQUIRED and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(
                f"keyferry bed: {skipped} test(s) skipped while servers are "
                "required (KEYFERRY_BED_REQUIRED=1): failing the run",
                red=True,
            )


# --- Kubernetes clusters (issue 4) -------------------------------------------------------
# Three clusters on one etcd: a has its own issuer (its URL); b and c share the issuer
# string that kubeadm, kind, k3s and rke2 default to, as real fleets do. Started side by side,
# once per session, on first use.

from tests.bed.kube import SHARED_ISSUER, ClusterSpec  # noqa: E402

KUBE_CLUSTERS = (ClusterSpec("a"), ClusterSpec("b", SHARED_ISSUER), ClusterSpec("c", SHARED_ISSUER))


@pytest.fixture(scope="session")
def kube_clusters(bed: Bed) -> dict[str, Cluster]:
    """Clusters a, b, c by name (b and c share an issuer, a's differs from both)."""
    return {c.name: c for c in need(lambda: bed.clusters(KUBE_CLUSTERS))}


@pytest.fixture(scope="session")
def kube_cluster(kube_clusters: dict[str, Cluster]) -> Cluster:
    """Cluster a, for tests that need just one."""
    return kube_clusters["a"]


# --- cluster a's real node (issue 15) -----------------------------------------------------

from tests.bed.node import Node  # noqa: E402


@pytest.fixture(scope="module")
def node(bed: Bed, kube_clusters: dict[str, Cluster]) -> Node:
    """Cluster a's one real node (kubelet, containerd, kube-proxy, kube-scheduler), started
    on first use and kept for the session, unless a test released it for another bed (the
    demo's process: one node runs per machine): then the next module starts it again. It
    needs root: elsewhere it skips, or fails naming why when required."""
    started = need(bed.node)
    print(f"\nkeyferry bed: node {started.name} Ready in {started.started_in:.1f}s", flush=True)
    return started
