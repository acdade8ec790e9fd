"""Issue 10, "Lease explosion: pods whose agent crash-loops hold at most one lease per
credential each; per-cluster caps hold under a burst of new pods", on the bed.

Scale (so the module runs in well under a minute): 10 pods with two credentials each, whose
agents die five times (alternately right after their files are written and in the middle
of Issue, cancelled at a random moment) and start a sixth time, all pods at once; then a
burst of 30 new pods against a per-cluster cap of 24 live leases. Each agent is the agent's
own session and channel, in one process (tests/e2e/agents.py). Both cases end by counting
leases in the store and in Vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.e2e.agents import PodAgent, pod_agents
from tests.e2e.pods import dsn_values, live_leases, live_leases_all, vault_leases
from tests.e2e.scene import BrokerThread, scene_broker
from tests.integration.test_issue import MOUNT

pytestmark = pytest.mark.bed
PODS, DEATHS = 10, 5
CLUSTER_CAP, BURST = 24, 30
BACKOFF = (0.05, 0.5)
WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    postgres: PostgresServer,
    kube_clusters: dict[str, KubeCluster],
) -> Iterator[BrokerThread]:
    folder = tmp_path_factory.mktemp("leases-broker")
    limits = {"per_cluster": CLUSTER_CAP}
    running = scene_broker(folder, vault, postgres, kube_clusters, limits=limits)
    yield running
    running.stop()
    vault.client().sys.disable_secrets_engine(MOUNT)


async def until(probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not probe():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def die(agent: PodAgent, mid_issue: bool) -> None:
    """One life of a crash-looping agent: SIGKILLed after its files, or in the middle of Issue."""
    session = agent.new_life()
    starting = asyncio.ensure_future(session.start())
    if mid_issue:
        await asyncio.sleep(random.uniform(0.0, 0.05))
        starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await agent.crash()


async def test_crash_looping_agents_hold_one_lease_per_credential_each(
    broker: BrokerThread, vault: VaultServer, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    root = vault.client()
    before = vault_leases(root, f"{MOUNT}/")
    agents = pod_agents(
        kube_clusters["b"], broker, tmp_path, PODS, ("db", "db2"), backoff=BACKOFF, prefix="loop"
    )
    for death in range(DEATHS):
        await asyncio.gather(*(die(agent, mid_issue=bool(death % 2)) for agent in agents))
    sessions = [agent.new_life() for agent in agents]
    await asyncio.gather(*(session.start() for session in sessions))

    new_in_vault = vault_leases(root, f"{MOUNT}/") - before
    in_store: set[str] = set()
    for agent in agents:
        every = live_leases_all(broker, "b", agent.pod)  # every state: nothing was ever doubled
        assert Counter(lease.credential for lease in every) == {"db": 1, "db2": 1}, agent.pod
        assert len(live_leases(broker, "b", agent.pod)) == 2
        in_store |= {lease.vault_lease_id for lease in every}
        files = Path(agent.spec.directory)
        assert dsn_values((files / "db").read_text())["password"]
    assert new_in_vault == in_store, "a Vault lease the store does not know, or the reverse"
    assert len(new_in_vault) == 2 * PODS

    for session in sessions:
        await session.release()
    for agent in agents:
        await agent.crash()


async def test_a_burst_of_new_pods_never_exceeds_the_per_cluster_cap(
    broker: BrokerThread, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    agents = pod_agents(
        kube_clusters["c"], broker, tmp_path, BURST, ("db",), backoff=BACKOFF, prefix="burst"
    )
    store = broker.broker.store()
    peak = 0

    def live() -> int:
        nonlocal peak
        count = int(store.leases.count_live(cluster="c"))
        peak = max(peak, count)
        return count

    async def sample() -> None:
        while True:
            live()
            await asyncio.sleep(0.02)

    sampling = asyncio.ensure_future(sample())
    try:
        sessions = [agent.new_life() for agent in agents]
        starting = [asyncio.ensure_future(session.start()) for session in sessions]
        await until(lambda: sum(task.done() for task in starting) >= CLUSTER_CAP, "the cap filled")
        await until(lambda: live() == CLUSTER_CAP, "the store at the cap")
        for _ in range(10):  # the others keep asking (RESOURCE_EXHAUSTED) and keep waiting
            await asyncio.sleep(BACKOFF[1] / 2)
            assert live() == CLUSTER_CAP
        waiting = [s for s, task in zip(sessions, starting, strict=True) if not task.done()]
        assert len(waiting) == BURST - CLUSTER_CAP
        assert all(not s.held for s in waiting)

        done = [s for s, task in zip(sessions, starting, strict=True) if task.done()]
        for session in done[: BURST - CLUSTER_CAP]:  # some pods end: SIGTERM releases
            await session.release()
        await until(lambda: all(task.done() for task in starting), "the waiting pods served")
        for task in starting:
            task.result()
        assert live() == CLUSTER_CAP
        assert all(s.held for s in waiting)
        assert peak == CLUSTER_CAP, f"the cluster held {peak} live leases, over its cap"
        for session in sessions:
            await session.release()
    finally:
        sampling.cancel()
        store.close()
        for agent in agents:
            await agent.crash()
