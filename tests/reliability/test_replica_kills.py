"""Two broker replicas on PostgreSQL, either one killed with -9 at random points of
rotations, round after round: nothing due is missed, nothing is done twice with effect,
and the audit chain of both verifies.

Two `keyferry broker serve` processes share one PostgreSQL store (audit sink `store`),
Vault and the clusters a and b. Pods in both clusters hold a database credential whose
Vault TTL is short (TTL seconds), so the replicas' renewals fall due again and again while
they are killed; each pod runs a Watch agent that acks every new generation and, when its
replica dies, reconnects to whichever replica is up (its snapshot brings it up to date).

A round starts a rotation of some pods (RotateSelected by pod names, or RotateLeases by
lease ids) on a random replica, kills a random replica (the leader or the follower) after
a random delay, and starts it again. Every choice comes from one seeded random source; the
seed is printed (and KEYFERRY_FAULT_SEED replays it). Rounds: 3 at the short scale, 20 at
the full one (KEYFERRY_FAULT_SCALE=full); pods: 6 and 10.

Afterwards, once the replicas settled (a bounded poll): each pod has one live lease, held
by its agent, and nothing is pending, revoking or waiting to be rotated; Vault's leases
under the mount are the store's live ones, each with time left; every login PostgreSQL
still has from this test is a current credential's, every current one works and every
older one seen is refused; no pod's current lease ran out at Vault (renewals went on
across the kills: reconcile never closed one Vault had dropped), and one pod never rotated
lived past its first TTL on renewals alone; no lease has two `lease.revoked` records nor
an orphan two `vault_lease.revoked`, and every revoked lease has its record (the change
and its record are one transaction with the store's chain: a kill cannot fall between);
every rotation requested and not done at a kill was done later; no sample saw two holders
of the leader's lock; `keyferry audit verify` passes. Failover and restart durations are
printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
from google.protobuf import duration_pb2

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.audit import StoreChainLog
from broker.backends import VaultClient, list_keyferry_leases
from broker.backends.transit import TransitSigner
from broker.clock import utcnow
from broker.store import LeaseQuery, LeaseRecord, LeaseState, Store
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import MOUNT, config
from tests.scene.engines import mount_postgres
from tests.scene.kube_helpers import BoundToken
from tests.scene.leases import Agent, works
from tests.scene.polling import until
from tests.scene.replicas import (
    LeaderWatch,
    Replica,
    chain_verifies,
    issue_on,
    leader_of,
    rotate_on,
    start_replica,
    store,
    store_dsn,
    vault_leases,
    watching,
)
from tests.scene.workloads import broker_stub, mint

from .scale import pick

__all__ = ["store", "store_dsn", "vault_leases"]  # fixtures of tests/scene/replicas.py
pytestmark = pytest.mark.bed
UNTIL, EVERY = 120.0, 0.5  # the polls' bound and period, as in test_broker_kill
ROUNDS = pick(3, 20)
PODS = pick(6, 10)
TTL = 30  # seconds: the Vault role's default lease TTL, and what a renewal extends by
TOKEN_SECONDS = 3600  # the pods' tokens outlive the run: Watch streams end only by kills
SEED = int(os.environ.get("KEYFERRY_FAULT_SEED") or secrets.randbits(32))
ALL_STATES = frozenset(LeaseState)
LEADER, FOLLOWER = "leader", "follower"
FAILED = LeaseState.FAILED


@pytest.fixture(scope="module")
def short_lived_db(root: hvac.Client, postgres: PostgresServer) -> Iterator[None]:
    """The orders database mount of the docs' role catalog, its leases living TTL seconds."""
    mount_postgres(root, postgres, MOUNT, "ro", default_ttl=f"{TTL}s")
    yield
    root.sys.disable_secrets_engine(MOUNT)


@pytest.fixture
def shared(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    short_lived_db: None,
    transit: TransitSigner,
    store_dsn: str,
) -> dict[str, Any]:
    """Both replicas' settings: short timings, so what a kill leaves behind (a rotation
    part-way, a pending row, a Vault lease not recorded, a revocation due) is settled by
    the survivor within seconds; renewals run every second for the streams a replica holds."""
    data = config(tmp_path, vault, approle, {n: kube_clusters[n] for n in "ab"}, store_dsn)
    data["rotation"] = {
        "grace": "5s",
        "resume_interval": "1s",
        "concurrency": 2,
        "resume_after": "2s",
    }
    data["revocation"] = {"interval": "1s", "backoff": "1s"}
    data["reconcile"] = {"interval": "2s", "orphan_age": "3s"}
    # Renewed early (after 20-30% of the TTL): a stream that cannot be opened again for
    # a while (after a kill, a busy API server answers Watch's pod lookups late, for 10 s
    # and more on a loaded bed) still finds its lease alive when it is back.
    data["renewal"] = {"interval": "1s", "fraction": 0.3, "window": "10s"}
    data["scheduler"] = {"leadership": "1s"}
    return data


# --- the pods' agents ---------------------------------------------------------------------------


@dataclass
class PodAgent:
    """A pod's Watch agent: holds the newest generation it was given and acks it; when its
    stream breaks it reconnects to a replica that is up."""

    token: BoundToken
    replicas: list[Replica]
    rng: random.Random
    held: broker_pb2.Lease | None = None
    seen: dict[str, dict[str, str]] = field(default_factory=dict)  # lease id -> credential
    streams: int = 0

    @property
    def cluster(self) -> str:
        return self.token.cluster

    def take(self, issued: broker_pb2.IssueResponse) -> None:
        self.seen[issued.lease.id] = dict(issued.credential.values)
        self.held = issued.lease

    async def run(self) -> None:
        while True:
            up = [r for r in self.replicas if r.alive() and r.ports]
            if up:
                with contextlib.suppress(grpc.RpcError):
                    await self._stream(self.rng.choice(up))
            await asyncio.sleep(0.2)

    async def _stream(self, replica: Replica) -> None:
        async with broker_stub(replica.port, replica.ca) as stub:
            agent = Agent(stub, self.token)
            self.streams += 1
            try:
                while isinstance(event := await agent.call.read(), broker_pb2.WatchResponse):
                    if event.WhichOneof("event") == "rotated":
                        await self._rotated(agent, event.rotated)
            finally:
                agent.close()

    async def _rotated(self, agent: Agent, rotated: broker_pb2.Rotated) -> None:
        lease = rotated.lease
        self.seen[lease.id] = dict(rotated.credential.values)
        if self.held is None or lease.generation > self.held.generation:
            self.held = lease
            await agent.ack(lease)  # the new one is in place: the older ones may go


@contextlib.asynccontextmanager
async def running(agents: list[PodAgent]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- rounds -------------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    origin: str
    how: str
    pods: int
    victim: str
    victim_led: bool
    delay: float
    rotation: str = ""
    failover: float | None = None  # seconds from the kill to the survivor leading
    restart: float = 0.0  # seconds the victim took to serve again
    took: float = 0.0  # seconds the rotation call took (done, or cut by the kill)
    requested: set[str] = field(default_factory=set, repr=False)  # not rotated at the kill


async def rotate_selected(replica: Replica, pods: list[str], grace: int, workers: int) -> int:
    """RotateSelected by pod names on `replica`; how many leases it reported."""
    request = rotation_pb2.RotateSelectedRequest(
        selector=rotation_pb2.LeaseSelector(pods=pods),
        grace=duration_pb2.Duration(seconds=grace),
        concurrency=workers,
    )
    reported = 0
    async with replica.admin_channel() as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        async for event in stub.RotateSelected(request):
            reported += event.WhichOneof("event") == "lease"
    return reported


def rows(store: Store) -> list[LeaseRecord]:
    return store.leases.select_page(LeaseQuery(states=ALL_STATES), None, 100_000)


def active_ids(store: Store, agents: list[PodAgent]) -> list[str]:
    uids = {agent.token.pod_uid for agent in agents}
    return [r.id for r in rows(store) if r.state is LeaseState.ACTIVE and r.pod_uid in uids]


def victims(rng: random.Random) -> list[str]:
    """Whom each round kills: at random, the leader and the follower at least once each."""
    roles = [LEADER, FOLLOWER] + [rng.choice([LEADER, FOLLOWER]) for _ in range(ROUNDS - 2)]
    rng.shuffle(roles)
    return roles


async def one_round(
    number: int,
    role: str,
    rng: random.Random,
    replicas: list[Replica],
    agents: list[PodAgent],
    store: Store,
) -> Round:
    origin = rng.choice(replicas)
    chosen = rng.sample(agents[1:], rng.randint(1, len(agents) - 1))  # agents[0]: never
    how, grace, delay = rng.choice(["selector", "leases"]), rng.randint(2, 6), rng.uniform(0, 0.5)
    leader = await asyncio.to_thread(leader_of, replicas)
    if leader is None:
        victim = rng.choice(replicas)
    else:
        victim = leader if role == LEADER else next(r for r in replicas if r is not leader)
    led = victim is leader
    record = Round(number, origin.name, how, len(chosen), victim.name, led, round(delay, 2))
    rotating: asyncio.Task[object]
    if how == "selector":
        names = [agent.token.pod for agent in chosen]
        rotating = asyncio.create_task(rotate_selected(origin, names, grace, rng.randint(1, 3)))
    else:
        ids = await asyncio.to_thread(active_ids, store, chosen)
        assert len(ids) == len(chosen), f"seed {SEED} round {number}: a pod lost its lease"
        rotating = asyncio.create_task(rotate_on(origin, ids, grace))
    started = time.monotonic()
    rotating.add_done_callback(
        lambda _: setattr(record, "took", round(time.monotonic() - started, 2))
    )
    await asyncio.sleep(delay)
    victim.kill()
    killed = time.monotonic()
    asked = await asyncio.to_thread(store.leases.rotation_requests, utcnow())
    record.requested = {request.lease.id for request in asked}  # due: must be rotated
    failed = (await asyncio.gather(rotating, return_exceptions=True))[0]
    if isinstance(failed, BaseException):
        cut = isinstance(failed, grpc.RpcError) and origin is victim
        assert cut, f"round {number}: the rotation failed on the survivor: {failed!r}"
    record.rotation = "cut by the kill" if isinstance(failed, BaseException) else "done"
    if led:
        await until(
            lambda: asyncio.to_thread(leader_of, replicas),
            "the survivor leads",
            within=UNTIL,
            every=EVERY,
        )
        record.failover = round(time.monotonic() - killed, 2)
    await asyncio.sleep(rng.uniform(0, 2))  # the survivor alone for a while
    began = time.monotonic()
    await victim.restart()
    record.restart = round(time.monotonic() - began, 2)
    await until(
        lambda: asyncio.to_thread(leader_of, replicas),
        "one replica leads",
        within=UNTIL,
        every=EVERY,
    )
    return record


# --- the test -----------------------------------------------------------------------------------


async def test_replicas_killed_at_random_points_of_rotations_miss_nothing_and_repeat_nothing(
    tmp_path: Path,
    shared: dict[str, Any],
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    root: hvac.Client,
    store_dsn: str,
    store: Store,
    vault_leases: VaultClient,
) -> None:
    print(f"\nseed {SEED} (KEYFERRY_FAULT_SEED={SEED} replays the choices), rounds {ROUNDS}")
    rng = random.Random(SEED)
    logins_before = await asyncio.to_thread(vault_logins, postgres)
    replicas = [await start_replica(tmp_path, name, shared) for name in ("one", "two")]
    try:
        await until(
            lambda: asyncio.to_thread(leader_of, replicas),
            "one replica leads",
            within=UNTIL,
            every=EVERY,
        )
        tokens = [
            mint(kube_clusters["ab"[n % 2]], pod_prefix="kills", seconds=TOKEN_SECONDS)
            for n in range(PODS)
        ]
        agents = [
            PodAgent(token, replicas, random.Random(f"{SEED}/{n}"))
            for n, token in enumerate(tokens)
        ]
        for agent in agents:
            agent.take(await issue_on(rng.choice(replicas), agent.token))
        rounds: list[Round] = []
        async with watching(LeaderWatch(store_dsn, replicas)) as watch, running(agents):
            for number, role in enumerate(victims(rng), start=1):
                rounds.append(await one_round(number, role, rng, replicas, agents, store))
                print(f"round {rounds[-1]}")

            left = ["not looked yet"]

            async def settled() -> bool:
                at_vault = set(await mount_leases(vault_leases))
                left[0] = await asyncio.to_thread(unsettled, store, agents, at_vault)
                return not left[0]

            try:
                await until(
                    settled,
                    "one live lease per pod, held by its agent, nothing pending",
                    within=UNTIL,
                    every=EVERY,
                )
            except AssertionError as never:
                raise AssertionError(f"seed {SEED}: {never}; left: {left[0]}") from None
        report(rounds, agents)
        assert watch.samples > 0
        assert watch.most_holders == 1  # the leader's lock: never two holders
        await check_vault_and_logins(store, agents, root, postgres, logins_before)
        check_requests_done(store, set().union(*(r.requested for r in rounds)))
        check_audit(store, len(rounds))
        for replica in replicas:
            assert replica.stop() == 0  # SIGTERM: the last one signs a checkpoint
        chain_verifies(replicas[0], store)
    finally:
        for replica in replicas:
            replica.stop()


async def mount_leases(vault: VaultClient) -> list[str]:
    return [lease for lease in await list_keyferry_leases(vault) if lease.startswith(MOUNT)]


def unsettled(store: Store, agents: list[PodAgent], at_vault: set[str]) -> str:
    """What is left to do, or "" when nothing: no row pending or revoking, no rotation
    waiting, each pod one active lease which its agent holds, Vault holding exactly the
    active ones; and the pod never rotated has outlived its first lease's TTL (its
    renewals fell due)."""
    everything = rows(store)
    if busy := [r for r in everything if r.state in (LeaseState.PENDING, LeaseState.REVOKING)]:
        return f"rows pending or revoking: {busy}"
    if waiting := store.leases.rotation_requests(utcnow()):
        return f"rotations requested: {waiting}"
    active = [r for r in everything if r.state is LeaseState.ACTIVE]
    by_pod = {r.pod_uid: r for r in active}
    if len(active) != len(agents) or len(by_pod) != len(agents):
        return f"not one active lease per pod: {active}"
    for agent in agents:
        lease = by_pod.get(agent.token.pod_uid)
        if lease is None or agent.held is None or agent.held.id != lease.id:
            return f"pod {agent.token.pod} holds {agent.held}, its active lease is {lease}"
    if (in_store := {r.vault_lease_id for r in active}) != at_vault:
        return f"Vault {sorted(at_vault)} != store {sorted(map(str, in_store))}"
    bystander = by_pod[agents[0].token.pod_uid]
    if utcnow() - bystander.created_at <= timedelta(seconds=TTL * 1.2):
        return "the pod never rotated has not outlived its lease's first TTL yet"
    return ""


async def check_vault_and_logins(
    store: Store,
    agents: list[PodAgent],
    root: hvac.Client,
    postgres: PostgresServer,
    logins_before: set[str],
) -> None:
    active = {r.pod_uid: r for r in rows(store) if r.state is LeaseState.ACTIVE}
    current: dict[str, dict[str, str]] = {}
    for agent in agents:
        assert agent.held is not None
        lease = active[agent.token.pod_uid]
        assert lease.generation == agent.held.generation
        assert lease.vault_lease_id is not None
        looked_up = await asyncio.to_thread(root.sys.read_lease, lease.vault_lease_id)
        assert looked_up["data"]["ttl"] > 0, lease  # alive at Vault, with time left
        current[lease.id] = agent.seen[lease.id]
    bystander = active[agents[0].token.pod_uid]
    assert bystander.generation == 1  # never rotated: it lived on renewals alone
    for lease_id, values in (pair for agent in agents for pair in agent.seen.items()):
        assert await asyncio.to_thread(works, postgres, values) is (lease_id in current), lease_id
    left = await asyncio.to_thread(vault_logins, postgres)
    assert left - logins_before == {values["username"] for values in current.values()}


def check_requests_done(store: Store, requested: set[str]) -> None:
    """Every lease whose rotation was requested and not done when a replica was killed was
    rotated afterwards (by the call, or by the rotation queue of whichever replica led)."""
    everything = rows(store)
    for lease in (r for r in everything if r.id in requested):
        pod = sorted((r for r in everything if r.pod_uid == lease.pod_uid), key=generation)
        assert lease.state is LeaseState.REVOKED, pod
        # its successor: a later generation that was issued (one a killed replica began
        # and reconcile failed does not count: the request was kept, the next one was made)
        later = [r for r in pod if r.generation > lease.generation and r.state is not FAILED]
        assert later, pod
    print(f"rotations requested but not done at a kill, done later: {len(requested)}")


def generation(lease: LeaseRecord) -> int:
    return lease.generation


def vault_logins(postgres: PostgresServer) -> set[str]:
    """The PostgreSQL roles Vault's database engine made (`v-…`) that exist now."""
    with postgres.connect() as conn:
        names = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'").fetchall()
    return {name for (name,) in names}


def check_audit(store: Store, kills: int) -> None:
    """Each revoked lease revoked once with effect, each orphan once; no pod's current lease
    expired at Vault (reconcile would close it as NOT_IN_VAULT); renewals happened."""
    records = [json.loads(line) for line in StoreChainLog(store.audit_chain).lines()]
    revoked = Counter(r["lease_id"] for r in records if r["action"] == "lease.revoked")
    expected = {r.id for r in rows(store) if r.state is LeaseState.REVOKED}
    assert set(revoked) <= expected  # no record of a revocation that did not happen
    assert [lease for lease, count in revoked.items() if count != 1] == []  # none twice
    # The change and its record commit together (audit.sink: store): a replica killed
    # between the two leaves neither, so none is unrecorded, whatever the kills.
    unrecorded = expected - set(revoked)
    assert unrecorded == set(), (kills, unrecorded)
    orphans = Counter(r["target"] for r in records if r["action"] == "vault_lease.revoked")
    assert [lease for lease, count in orphans.items() if count != 1] == []
    assert [r for r in records if ran_out(r, records)] == []
    renewed = sum(1 for r in records if r["action"] == "lease.renewed")
    print(
        f"audit: {len(records)} records, {sum(revoked.values())} revocations "
        f"({len(unrecorded)} unrecorded), "
        f"{len(orphans)} orphans revoked, {renewed} renewals"
    )
    assert renewed > 0


def ran_out(record: dict[str, Any], records: list[dict[str, Any]]) -> bool:
    """A pod's current lease that Vault dropped (it expired: a renewal was missed) and
    reconcile closed. A rotated-away one may be closed so too: its replica revoked it at
    Vault after the Ack and reconcile saw it gone before the row said so (still one
    `lease.revoked`); it is not a miss when its successor was active before."""
    if record["action"] != "lease.revoked" or record["reason"] != "NOT_IN_VAULT":
        return False
    return not any(
        r["action"] == "lease.active"
        and r["pod_uid"] == record["pod_uid"]
        and r["generation"] > record["generation"]
        and r["seq"] < record["seq"]
        for r in records
    )


def report(rounds: list[Round], agents: list[PodAgent]) -> None:
    led = [r for r in rounds if r.victim_led]
    failovers = [r.failover for r in led if r.failover is not None]
    print(
        f"seed {SEED}: {len(rounds)} rounds, {len(led)} kills of the leader, "
        f"{len(rounds) - len(led)} of the follower, "
        f"{sum(r.rotation != 'done' for r in rounds)} rotations cut; "
        f"failover s (observed) {failovers}; "
        f"restart s (observed) {[r.restart for r in rounds]}; "
        f"Watch streams opened {sum(a.streams for a in agents)}"
    )
