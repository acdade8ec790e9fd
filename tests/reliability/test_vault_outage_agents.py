"""Issue 10, "OpenBao (Vault) stopped for 60 s then restarted: agents keep their last valid
files", on the bed — the agents' side of tests/reliability/test_faults.py's Vault outage.

Four pods of cluster a hold a PostgreSQL credential each through the agent's own session
and channel (tests/scene/agents.py), with Watch open, from a broker on the persistent Vault
(its leases survive a restart). Vault's lease TTL is 3 x OUTAGE and the broker renews at
1/6 of a lease's lifetime, so renewals fall due while Vault is stopped for OUTAGE seconds
(10 s; KEYFERRY_FAULT_SCALE=full: the issue's 60 s) and every lease outlives the outage.

During the outage: every file stays byte-identical and the agent's probe (the
readiness probe) passes; the failed renewals leave every lease active, with no revocation
attempt; an agent restarted in the middle (a container restart) gets its pod's lease back
from the store and rewrites the same bytes; a new pod's agent is refused with UNAVAILABLE
(VAULT_UNAVAILABLE, RetryInfo) and waits at least the hint between its attempts. After the
restart: the renewals succeed (the store, Vault and the agents see a later end: a Renewed
event reached each agent), the new pod is served, every file logs in to PostgreSQL, and
Vault's leases under the mount are exactly the store's active ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg
import pytest

from broker.service.jobs.renewal import renewal_due
from broker.store import LeaseRecord, LeaseState, Selector
from injector.contract import AGENT_SPEC_ENV
from injector.probe import EXIT_OK, check
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.reliability.scale import pick
from tests.scene.agents import Agents, PodAgent, pod_agents
from tests.scene.broker import MOUNT, refused
from tests.scene.broker_thread import BrokerThread, serving
from tests.scene.pods import vault_leases
from tests.scene.polling import until_true
from tests.scene.workloads import error_info, mint, retry_delay

pytestmark = pytest.mark.bed
OUTAGE = pick(10.0, 60.0)  # seconds Vault stays down
TTL = int(3 * OUTAGE)  # Vault's lease TTL: every lease outlives the outage
PODS = 4
BACKOFF = (0.05, 0.5)  # the agents' own backoff, far below Vault's RetryInfo
SAMPLE = 0.25  # seconds between looks at the files during the outage
UNTIL = 60.0  # bound of every poll; never asserted


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    vault_persistent: VaultServer,
    postgres: PostgresServer,
    kube_clusters: dict[str, KubeCluster],
) -> Iterator[BrokerThread]:
    renewal = {"interval": "1s", "fraction": 1 / 6, "jitter": 0.0, "window": "1s"}
    with serving(
        tmp_path_factory.mktemp("vault-outage-broker"),
        vault_persistent,
        postgres,
        kube_clusters,
        renewal=renewal,
        ttl=f"{TTL}s",
    ) as running:
        yield running


def leases(broker: BrokerThread) -> dict[str, LeaseRecord]:
    """Every lease the store holds, in every state, by id."""
    store = broker.broker.store()
    try:
        found = store.leases.list_by_selector(Selector(states=frozenset(LeaseState)))
    finally:
        store.close()
    return {row.id: row for row in found}


def ready(agent: PodAgent) -> bool:
    """The agent's startup and readiness probe (`injector.probe`)."""
    return check({AGENT_SPEC_ENV: agent.spec.model_dump_json()}) == EXIT_OK


def file_of(agent: PodAgent) -> Path:
    return Path(agent.spec.directory) / "db"


def end_of(row: LeaseRecord) -> datetime:
    assert row.expires_at is not None
    return row.expires_at


def held_end(agent: PodAgent) -> datetime:
    assert agent.session is not None
    end = agent.session.held["db"].expires_at
    assert end is not None
    return end


until = functools.partial(until_true, within=UNTIL, every=0.1)


async def test_agents_keep_their_files_while_vault_is_stopped_and_renew_once_it_is_back(
    broker: BrokerThread,
    vault_persistent: VaultServer,
    postgres: PostgresServer,
    kube_clusters: dict[str, KubeCluster],
    tmp_path: Path,
) -> None:
    cluster = kube_clusters["a"]
    agents = pod_agents(cluster, broker, tmp_path, PODS, ("db",), backoff=BACKOFF, prefix="hold")
    late = Agents()
    (newcomer,) = pod_agents(
        cluster, broker, tmp_path, 1, ("db",), backoff=BACKOFF, record=late, prefix="newcomer"
    )
    sessions = [agent.new_life() for agent in agents]
    await asyncio.gather(*(session.start() for session in sessions))
    holding: list[asyncio.Future[None]] = [asyncio.ensure_future(s.hold()) for s in sessions]
    arriving: asyncio.Future[None] | None = None
    try:
        await until(lambda: broker.streams() == PODS, "every agent watching")
        ours = {a.number: sessions[a.number].held["db"].issued.lease_id for a in agents}
        root = vault_persistent.client()
        files = {a.number: file_of(a).read_bytes() for a in agents}

        await asyncio.to_thread(vault_persistent.stop)
        stopped = time.monotonic()
        try:
            # a new pod's Issue reaches Vault: refused, with a hint to retry later
            probe = await refused(broker.broker, mint(cluster, pod_prefix="probe"))
            assert probe.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(probe).reason == "VAULT_UNAVAILABLE"
            hint = retry_delay(probe)
            assert hint is not None
            assert hint > BACKOFF[1]  # so a wait of at least the hint is the hint's doing
            arriving = asyncio.ensure_future(newcomer.new_life().start())

            # a container restart of one agent: its pod's lease comes back from the store
            restarted = agents[0]
            holding[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding[0]
            await restarted.crash()
            session = restarted.new_life()
            await asyncio.wait_for(session.start(), UNTIL)
            assert session.held["db"].issued.lease_id == ours[0]
            assert file_of(restarted).read_bytes() == files[0]
            sessions[0] = session
            holding[0] = asyncio.ensure_future(session.hold())

            samples = 0
            while time.monotonic() - stopped < OUTAGE:
                for agent in agents:
                    assert file_of(agent).read_bytes() == files[agent.number], agent.pod
                    assert ready(agent), agent.pod
                samples += 1
                await asyncio.sleep(SAMPLE)
            assert not arriving.done()  # still waiting for Vault, neither served nor stopped
            assert not any(task.done() for task in holding)  # every agent still running
            rows = leases(broker)
            now = datetime.now(UTC)
            ends = {}
            for agent in agents:
                row = rows[ours[agent.number]]
                assert row.state == LeaseState.ACTIVE  # no failed renewal became a revocation
                assert row.revoke_attempts == 0
                # a renewal fell due while Vault was down, and none could be made
                assert renewal_due(row, now, broker.broker.settings.renewal), agent.pod
                ends[agent.number] = end_of(row)
            agent_ends = {a.number: held_end(a) for a in agents}
        finally:
            await asyncio.to_thread(vault_persistent.restart)
        outage = time.monotonic() - stopped

        tries = [w for w in late.waits if w.at < stopped + OUTAGE]
        assert tries, "the new pod's agent never waited to retry"
        assert all(w.seconds >= hint for w in tries), [w.seconds for w in tries]

        def renewed() -> bool:
            rows = leases(broker)
            return all(end_of(rows[ours[a.number]]) > ends[a.number] for a in agents)

        await until(renewed, "every lease renewed once Vault is back")
        await until(
            lambda: all(held_end(a) > agent_ends[a.number] for a in agents),
            "a Renewed event reaching every agent",
        )
        rows = leases(broker)
        for agent in agents:
            row = rows[ours[agent.number]]
            assert row.state == LeaseState.ACTIVE
            looked_up = root.sys.read_lease(row.vault_lease_id)["data"]
            vault_end = datetime.now(UTC) + timedelta(seconds=looked_up["ttl"])
            assert vault_end > ends[agent.number] + timedelta(seconds=OUTAGE / 2)
            assert file_of(agent).read_bytes() == files[agent.number]  # same credential
        await asyncio.wait_for(arriving, UNTIL)  # the new pod is served
        for agent in (*agents, newcomer):
            psycopg.connect(file_of(agent).read_text()).close()
            assert ready(agent)

        assert not any(task.done() for task in holding)
        active = {r.vault_lease_id for r in leases(broker).values() if r.state == LeaseState.ACTIVE}
        assert vault_leases(root, f"{MOUNT}/") == active  # nothing untracked, nothing lost
        print(
            f"\nVault away {outage:.1f} s; {samples} looks at {PODS} files; the new pod's "
            f"agent waited {len(tries)} times, {min(w.seconds for w in tries):.2f} to "
            f"{max(w.seconds for w in tries):.2f} s (hint {hint} s)"
        )
    finally:
        tasks = [*holding, *([arriving] if arriving is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for agent in (*agents, newcomer):
        if agent.session is not None:
            await agent.session.release()
        await agent.crash()
