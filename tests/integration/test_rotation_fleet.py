"""Rotation and revocation by selector, RotateRoot and reconcile, on the bed.

The scene of test_issue.py (in-process broker, Vault with AppRole and docs/vault-policy.hcl,
PostgreSQL behind keyferry/db-orders, clusters a, b and c), plus a policy that lets pods of
`fleet-*` namespaces get the database role, so a test can spread a fleet over namespaces of
its own. Waiting for Vault and PostgreSQL is a bounded poll; no test asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
import yaml
from google.protobuf import duration_pb2
from typer.testing import CliRunner, Result

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.cli.exits import CONFIG, NOTHING_SELECTED
from broker.cli.main import app as cli
from broker.service.common.audit_trail import system_principal
from broker.store import LeaseRequest, LeaseState, PendingLease
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import DOCS, ROLE, Broker, issue, log_in
from tests.scene.clocks import ShiftedClock
from tests.scene.engines import mount_postgres
from tests.scene.leases import Agent, rotate, works
from tests.scene.polling import until
from tests.scene.workloads import broker_stub, error_info, mint

pytestmark = pytest.mark.bed
FLEET_POLICY = """
@id("fleet-workloads-issue")
permit (principal is Workload, action == Action::"issue", resource is Role)
when { principal.namespace like "fleet-*" && resource.backend == "database" };
"""
ROOT_MOUNT, ROOT_ROLE = "keyferry/db-root", "root-db"
# The fleet of the Ack test; set it higher for a figure (the time from the call to the last
# Ack is printed with -s): KEYFERRY_FLEET_SIZE=200 pytest -s -k acks ...
FLEET_SIZE = int(os.environ.get("KEYFERRY_FLEET_SIZE", "20"))
FLEET_WAIT = 600.0  # bound of the whole fleet's rotation; generous, and never asserted


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture(scope="module")
def root_db(root: hvac.Client, postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """A database mount whose root user is a superuser of its own (rotate-root changes its
    password, so it must not be the one the other tests use)."""
    user, password = f"kfroot_{secrets.token_hex(4)}", secrets.token_hex(16)
    with postgres.connect() as conn:
        conn.execute(f"CREATE ROLE {user} WITH LOGIN SUPERUSER PASSWORD '{password}'")
    mount_postgres(root, postgres, ROOT_MOUNT, "ro")
    root.secrets.database.configure(
        name="pg",
        plugin_name="postgresql-database-plugin",
        mount_point=ROOT_MOUNT,
        allowed_roles=["ro"],
        verify_connection=True,
        connection_url=(
            f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}"
            "/postgres?sslmode=disable"
        ),
        username=user,
        password=password,
    )
    yield user, password
    root.sys.disable_secrets_engine(ROOT_MOUNT)


@pytest.fixture
def broker_config(
    tmp_path: Path, broker_config: dict[str, Any], root_db: tuple[str, str]
) -> dict[str, Any]:
    policy = tmp_path / "fleet.cedar"
    policy.write_text(FLEET_POLICY)
    broker_config["policies"].append(str(policy))
    roles = yaml.safe_load((DOCS / "examples" / "roles.yaml").read_text())
    roles.append({"name": ROOT_ROLE, "kind": "database", "mount": "db-root", "vault_role": "ro"})
    (tmp_path / "roles.yaml").write_text(yaml.safe_dump(roles))
    broker_config["roles"] = str(tmp_path / "roles.yaml")
    broker_config["rotation"] = {"grace": "1h", "resume_interval": "1s", "concurrency": 4}
    broker_config["revocation"] = {"interval": "1s"}
    # The tests run reconcile's passes themselves.
    broker_config["reconcile"] = {"interval": "1h", "orphan_age": "2m"}
    broker_config["renewal"] = {"interval": "1h", "window": "2m"}
    return broker_config


# --- helpers ----------------------------------------------------------------------------------


class Pod:
    """A pod of the fleet: its token and the credential Issue gave it."""

    def __init__(self, token: Any, issued: broker_pb2.IssueResponse) -> None:
        self.token = token
        self.lease_id = issued.lease.id
        self.values = dict(issued.credential.values)


async def fleet(broker: Broker, cluster: KubeCluster, namespace: str, count: int) -> list[Pod]:
    tokens = await asyncio.gather(
        *(asyncio.to_thread(mint, cluster, namespace, "fleet") for _ in range(count))
    )
    issued = await asyncio.gather(*(issue(broker, token) for token in tokens))
    return [Pod(token, answer) for token, answer in zip(tokens, issued, strict=True)]


async def keyferry(broker: Broker, folder: Path, *args: str, operator: str = SECURITY) -> Result:
    context = str(broker.context_file(folder, operator))
    return await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--context", context], catch_exceptions=False
    )


def document(result: Result) -> dict[str, Any]:
    """The JSON document of `-o json` (stdout's last JSON object; lines go to stderr)."""
    text = result.stdout
    parsed: dict[str, Any] = json.loads(text[text.index("{") :])
    return parsed


def states(broker: Broker, lease_ids: list[str]) -> dict[str, LeaseState]:
    store = broker.store()
    try:
        return {lease_id: store.leases.get(lease_id).state for lease_id in lease_ids}
    finally:
        store.close()


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    lines = broker.settings.audit.log.read_text().splitlines()
    return [json.loads(line) for line in lines]


# --- rotation by selector -----------------------------------------------------------------------


async def test_a_rotation_by_selector_reaches_exactly_the_selected_leases_in_two_clusters(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    in_a = await fleet(broker, kube_clusters["a"], namespace, 3)
    in_b = await fleet(broker, kube_clusters["b"], namespace, 3)
    other_namespace = await fleet(broker, kube_clusters["a"], f"{namespace}-other", 2)
    other_cluster = await fleet(broker, kube_clusters["c"], namespace, 1)
    selected, untouched = in_a + in_b, other_namespace + other_cluster
    selector = ["--cluster", "a", "--cluster", "b", "--namespace", namespace]

    planned = await keyferry(broker, tmp_path, "rotate", *selector, "--dry-run", "-o", "json")
    assert planned.exit_code == 0, planned.output
    plan = document(planned)
    assert (plan["matched"], plan["done"], plan["dry_run"]) == (6, 0, True)
    assert {row["lease"] for row in plan["leases"]} == {pod.lease_id for pod in selected}
    assert {row["outcome"] for row in plan["leases"]} == {"planned"}
    everyone = [pod.lease_id for pod in selected + untouched]
    assert set(states(broker, everyone).values()) == {LeaseState.ACTIVE}  # nothing changed

    rotated = await keyferry(
        broker, tmp_path, "rotate", *selector, "--grace", "1s", "--concurrency", "2", "-o", "json"
    )
    assert rotated.exit_code == 0, rotated.output
    summary = document(rotated)
    assert (summary["matched"], summary["done"], summary["failed"]) == (6, 6, 0)
    assert {row["lease"] for row in summary["leases"]} == {pod.lease_id for pod in selected}
    assert {row["outcome"] for row in summary["leases"]} == {"rotated"}
    assert {row["new_generation"] for row in summary["leases"]} == {2}

    async def old_ones_dead() -> bool:
        if set(states(broker, [p.lease_id for p in selected]).values()) != {LeaseState.REVOKED}:
            return False
        alive = await asyncio.gather(
            *(asyncio.to_thread(works, postgres, pod.values) for pod in selected)
        )
        return not any(alive)

    await until(old_ones_dead, "every selected old lease revoked and its login refused")
    for pod in selected:
        again = await issue(broker, pod.token)  # Issue hands out the new generation
        assert again.lease.generation == 2
        assert again.credential.values["username"] != pod.values["username"]
        log_in(postgres, again.credential.values)
    assert set(states(broker, [p.lease_id for p in untouched]).values()) == {LeaseState.ACTIVE}
    for pod in untouched:
        log_in(postgres, pod.values)

    records = audit_records(broker)
    selection = [r for r in records if r["action"] == "rotate.selected"]
    assert len(selection) == 1
    assert selection[0]["who"] == {"kind": "operator", "name": SECURITY}
    assert selection[0]["selector"] == {"clusters": ["a", "b"], "namespaces": [namespace]}
    request_id = selection[0]["request_id"]
    decided = {
        r["lease_id"]
        for r in records
        if r["action"] == "rotate" and r["request_id"] == request_id and r["decision"] == "allow"
    }
    assert decided == {pod.lease_id for pod in selected}
    revoking = {
        r["lease_id"]
        for r in records
        if r["action"] == "lease.revoking" and r["request_id"] == request_id
    }
    assert revoking == {pod.lease_id for pod in selected}
    assert [r["selector"] for r in records if r["action"] == "rotate.plan"] == [
        {"clusters": ["a", "b"], "namespaces": [namespace]}
    ]


async def test_a_selector_matching_nothing_exits_4_and_an_empty_one_is_refused(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    pods = await fleet(broker, kube_clusters["a"], namespace, 1)

    nothing = await keyferry(broker, tmp_path, "rotate", "--namespace", f"{namespace}-none")
    assert nothing.exit_code == NOTHING_SELECTED
    assert "matched no lease" in nothing.output
    nothing = await keyferry(broker, tmp_path, "revoke", "--pod", "no-such-pod", "--dry-run")
    assert nothing.exit_code == NOTHING_SELECTED
    empty = await keyferry(broker, tmp_path, "rotate")
    assert empty.exit_code == CONFIG
    assert "--all" in empty.output

    async def rotate_nothing() -> None:
        request = rotation_pb2.RotateSelectedRequest(selector=rotation_pb2.LeaseSelector())
        async with broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            async for _ in stub.RotateSelected(request):
                pass

    with pytest.raises(grpc.RpcError) as refused:
        await rotate_nothing()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).metadata["field"] == "selector"
    assert "all" in (refused.value.details() or "")

    denied = await keyferry(
        broker, tmp_path, "rotate", "--namespace", namespace, "--grace", "1s", operator=PLATFORM
    )
    assert denied.exit_code == 1
    assert "nothing was changed" in denied.output
    assert states(broker, [pods[0].lease_id]) == {pods[0].lease_id: LeaseState.ACTIVE}


async def test_revoke_by_selector_ends_exactly_the_selected_leases(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    pods = await fleet(broker, kube_clusters["b"], namespace, 3)
    chosen, kept = pods[:2], pods[2]
    args = ["revoke", "--cluster", "b", "--namespace", namespace]
    for pod in chosen:
        args += ["--pod", pod.token.pod]

    result = await keyferry(broker, tmp_path, *args, "-o", "json")
    assert result.exit_code == 0, result.output
    summary = document(result)
    assert (summary["matched"], summary["done"], summary["pending"]) == (2, 2, 0)
    assert states(broker, [p.lease_id for p in chosen]) == {
        p.lease_id: LeaseState.REVOKED for p in chosen
    }
    for pod in chosen:
        assert not works(postgres, pod.values)
    log_in(postgres, kept.values)
    records = audit_records(broker)
    [selection] = [r for r in records if r["action"] == "revoke.selected"]
    assert selection["selector"]["pods"] == [pod.token.pod for pod in chosen]
    revoked = {
        r["lease_id"]
        for r in records
        if r["action"] == "lease.revoked" and r["request_id"] == selection["request_id"]
    }
    assert revoked == {pod.lease_id for pod in chosen}


async def test_a_fleet_rotation_with_acks_revokes_each_old_lease_on_its_pods_ack(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
) -> None:
    """Agents hold Watch streams and Ack each new generation, as the real agent does; the
    time from the call to the last Ack is printed (a figure for docs, never asserted)."""
    namespace = f"fleet-{secrets.token_hex(3)}"
    size = FLEET_SIZE - FLEET_SIZE % 2
    pods = await fleet(broker, kube_clusters["a"], namespace, size // 2)
    pods += await fleet(broker, kube_clusters["b"], namespace, size // 2)
    acked: dict[str, float] = {}
    async with broker_stub(broker.port, broker.ca) as workload:
        agents = [Agent(workload, pod.token) for pod in pods]
        for agent in agents:
            await agent.next()  # the snapshot: every stream is open

        async def answer(agent: Agent, pod: Pod) -> None:
            """Ack generation 2, then wait for the broker to revoke generation 1."""
            while True:  # a pod late in a big fleet waits its turn: no per-event bound
                event = await asyncio.wait_for(agent.call.read(), FLEET_WAIT)
                assert isinstance(event, broker_pb2.WatchResponse), f"stream ended: {event!r}"
                if event.HasField("rotated") and event.rotated.lease.generation == 2:
                    await agent.ack(event.rotated.lease)
                    acked[pod.lease_id] = time.monotonic()
                elif event.HasField("revoked") and event.revoked.lease_id == pod.lease_id:
                    assert event.revoked.reason == "rotated"
                    return

        answering = [asyncio.create_task(answer(a, p)) for a, p in zip(agents, pods, strict=True)]
        grace = duration_pb2.Duration()
        grace.FromSeconds(3600)  # only the Acks can revoke the old leases in time
        request = rotation_pb2.RotateSelectedRequest(
            selector=rotation_pb2.LeaseSelector(namespaces=[namespace]),
            grace=grace,
            concurrency=8,
        )
        started = time.monotonic()
        async with broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            events = [event async for event in stub.RotateSelected(request)]
        await asyncio.wait_for(asyncio.gather(*answering), FLEET_WAIT)
        for agent in agents:
            agent.close()
    took = max(acked.values()) - started
    print(f"\nfleet of {size}: rotate to last Ack {took:.2f} s", file=sys.stderr)
    assert events[0].plan.matched == size
    assert events[-1].summary.done == size
    outcomes = [e.lease for e in events if e.WhichOneof("event") == "lease"]
    assert {o.lease.id for o in outcomes} == {pod.lease_id for pod in pods}

    async def all_revoked() -> bool:
        return set(states(broker, [p.lease_id for p in pods]).values()) == {LeaseState.REVOKED}

    await until(all_revoked, "every old lease revoked on its pod's Ack")
    for pod in pods:
        assert not works(postgres, pod.values)

    revoke = rotation_pb2.RevokeSelectedRequest(
        selector=rotation_pb2.LeaseSelector(namespaces=[namespace]), concurrency=8
    )
    async with broker.admin_channel() as channel:
        stub = rotation_pb2_grpc.RotationServiceStub(channel)
        ended = [event async for event in stub.RevokeSelected(revoke)]
    assert (ended[-1].summary.matched, ended[-1].summary.done) == (size, size)


# --- RotateRoot --------------------------------------------------------------------------------


async def test_rotate_root_replaces_the_connections_root_and_new_leases_still_work(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    root_db: tuple[str, str],
    tmp_path: Path,
) -> None:
    user, password = root_db
    assert works(postgres, {"username": user, "password": password})
    denied = await keyferry(
        broker, tmp_path, "rotate-root", "--mount", "db-root", "--connection", "pg",
        operator=PLATFORM,
    )  # fmt: skip
    assert denied.exit_code == 1
    assert "rotate_root" in denied.output
    assert works(postgres, {"username": user, "password": password})

    result = await keyferry(
        broker, tmp_path, "rotate-root", "--mount", "db-root", "--connection", "pg", "-o", "json"
    )
    assert result.exit_code == 0, result.output
    assert document(result)["path"] == f"{ROOT_MOUNT}/rotate-root/pg"
    assert not works(postgres, {"username": user, "password": password})

    token = mint(kube_clusters["a"], f"fleet-{secrets.token_hex(3)}")
    issued = await issue(broker, token, credential="root-db", role=ROOT_ROLE)
    log_in(postgres, issued.credential.values)  # Vault issues with the new root

    bad = await keyferry(broker, tmp_path, "rotate-root", "--mount", "Db/..", "--connection", "x")
    assert bad.exit_code == 1
    assert "mount" in bad.output
    records = audit_records(broker)
    decisions = [(r["who"]["name"], r["decision"]) for r in records if r["action"] == "rotate_root"]
    assert decisions == [(PLATFORM, "deny"), (SECURITY, "allow")]
    [done] = [r for r in records if r["action"] == "connection.root_rotated"]
    assert done["target"] == f"{ROOT_MOUNT}/rotate-root/pg"


# --- reconcile ---------------------------------------------------------------------------------


async def test_reconcile_revokes_vault_orphans_closes_leases_vault_lost_and_fails_dead_issues(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    root: hvac.Client,
    clock: ShiftedClock,
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    lost, kept = await fleet(broker, kube_clusters["a"], namespace, 2)
    store = broker.store()
    try:
        root.sys.revoke_lease(store.leases.get(lost.lease_id).vault_lease_id)
        orphan = root.read("keyferry/db-orders/creds/ro")  # Vault issued; the store never knew
        request = LeaseRequest(
            cluster="a",
            namespace=namespace,
            service_account="workload",
            pod_name="died-mid-issue",
            pod_uid="uid-died-mid-issue",
            credential="orders-db",
            role=ROLE,
        )
        dead = store.leases.begin_issue(request)
        assert isinstance(dead, PendingLease)
    finally:
        store.close()
    orphan_login = {k: orphan["data"][k] for k in ("username", "password")}
    reconciler = broker.server.runtime.flows.reconciler

    first = await reconciler.run_once()
    assert first.closed == 1
    assert first.revoked == 0  # an unknown Vault lease is only noted on first sight
    assert states(broker, [lost.lease_id, kept.lease_id]) == {
        lost.lease_id: LeaseState.REVOKED,
        kept.lease_id: LeaseState.ACTIVE,
    }
    assert works(postgres, orphan_login)

    clock.offset = broker.settings.reconcile.orphan_age + broker.settings.reconcile.orphan_age
    second = await reconciler.run_once()
    assert second.revoked >= 1
    assert second.settled == 1
    assert not works(postgres, orphan_login)
    assert states(broker, [dead.lease.id]) == {dead.lease.id: LeaseState.FAILED}
    log_in(postgres, kept.values)
    records = audit_records(broker)
    assert orphan["lease_id"] in {
        r.get("target") for r in records if r["action"] == "vault_lease.revoked"
    }
    closed = [
        r for r in records if r["action"] == "lease.revoked" and r["reason"] == "NOT_IN_VAULT"
    ]
    assert [r["lease_id"] for r in closed] == [lost.lease_id]
    assert all(r["who"] == {"kind": "system", "name": "broker.reconcile"} for r in closed)


async def test_reconcile_records_no_second_revocation_of_a_lease_revoked_while_it_looked(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    root: hvac.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rotated-away lease whose revocation is under way when reconcile runs: the Revoker
    (on this replica or another) has revoked it at Vault, so reconcile sees it gone and
    closes it, while the Revoker settles the row. Whoever settles it records it; the other
    records nothing. Found by tests/reliability/test_replica_kills.py: reconcile recorded
    NOT_IN_VAULT after the Revoker's ROTATED, two `lease.revoked` for one lease."""
    namespace = f"fleet-{secrets.token_hex(3)}"
    [pod] = await fleet(broker, kube_clusters["a"], namespace, 1)
    await rotate(broker, pod.lease_id, timedelta(hours=1))  # the old one: revoking
    store = broker.store()
    try:
        old = store.leases.get(pod.lease_id)
    finally:
        store.close()
    assert old.state is LeaseState.REVOKING
    root.sys.revoke_lease(old.vault_lease_id)  # the Revoker's call to Vault, done
    runtime = broker.server.runtime
    reconciler, revoker = runtime.flows.reconciler, runtime.flows.revoker
    leases = revoker._leases  # reconcile settles through the Revoker: interleave its own pass
    settle = leases.settle_revoked
    first = [True]

    async def revoker_first(lease_id: str, *args: Any) -> Any:
        """The Revoker settles the row just before reconcile's own write to it."""
        if first[0] and lease_id == old.id:
            first[0] = False
            await revoker.revoke(old, system_principal("broker.revoke"), "revoker")
        return await settle(lease_id, *args)

    monkeypatch.setattr(leases, "settle_revoked", revoker_first)
    report = await reconciler.run_once()
    assert report.closed == 0
    assert states(broker, [old.id]) == {old.id: LeaseState.REVOKED}
    revoked = [
        (r["reason"], r["who"]["name"])
        for r in audit_records(broker)
        if r["action"] == "lease.revoked" and r["lease_id"] == old.id
    ]
    assert revoked == [("ROTATED", "broker.revoke")]
