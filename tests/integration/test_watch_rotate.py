"""Broker.Watch, Rotation.RotateLeases, the broker's renewals and Broker.Renew on the bed.

The scene's broker (tests/scene: in-process broker, Vault with AppRole, PostgreSQL behind a
keyferry database mount, pod-bound tokens from bed clusters), plus a controlled clock: the
broker reads "now" from `ShiftedClock`, so a test moves a token's end or a renewal window
by shifting the clock, never by waiting. Waiting for Vault and PostgreSQL to act is a
bounded poll (`until`), and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
from typer.testing import CliRunner

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.audit import StoreCheckpointSink, read_log, verify
from broker.backends.transit import TransitSigner
from broker.cli.exits import NOTHING_SELECTED
from broker.cli.main import app as cli
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.admin_helpers import SECURITY
from tests.scene.broker import ROLE, Broker, issue, log_in
from tests.scene.broker_thread import KV_MOUNT, KV_PATH, mount_kv
from tests.scene.clocks import ShiftedClock
from tests.scene.leases import Agent, rotate, state_of, works
from tests.scene.polling import until
from tests.scene.workloads import bearer, broker_stub, error_info, mint

pytestmark = pytest.mark.bed


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


KV_POLICY = """
@id("orders-workloads-kv")
permit (principal is Workload, action == Action::"issue", resource == Role::"app-config")
when { principal.namespace == "orders" };
"""
KV_ROLE, KV_CREDENTIAL = "app-config", "config"
FANOUT = 6  # pods watching one KV secret, spread over clusters a, b and c


@pytest.fixture
def broker_config(broker_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    kv_policy = tmp_path / "kv.cedar"
    kv_policy.write_text(KV_POLICY)
    broker_config["policies"].append(str(kv_policy))
    broker_config["rotation"] = {"grace": "1h", "resume_interval": "1s"}
    broker_config["revocation"] = {"interval": "1s"}
    # Renewals run when the test says (renew_due), not on the loop's own schedule.
    broker_config["renewal"] = {"interval": "1h", "window": "2m", "increment": "30m"}
    # A stream re-reads the clock at its re-check: a shifted clock is seen within a second.
    broker_config["limits"]["watch_recheck"] = "1s"
    return broker_config


async def revoked_and_dead(
    broker: Broker, postgres: PostgresServer, lease_id: str, values: Any
) -> bool:
    if state_of(broker, lease_id) != LeaseState.REVOKED:
        return False
    return not await asyncio.to_thread(works, postgres, values)


# --- rotation through Watch -------------------------------------------------------------------


async def test_rotate_pushes_generation_two_through_watch_and_the_ack_revokes_the_old_lease(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    transit: TransitSigner,
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="rotated")
    first = await issue(broker, token)
    old = first.credential.values
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, token)
        snapshot = await agent.next()
        assert snapshot.rotated.lease.id == first.lease.id
        assert snapshot.rotated.lease.generation == 1

        rotation = await rotate(broker, first.lease.id, timedelta(hours=1))
        assert rotation.previous_lease_id == first.lease.id
        assert rotation.lease.generation == 2
        assert not rotation.already_rotated

        pushed = (await agent.next()).rotated
        assert pushed.lease.id == rotation.lease.id
        assert pushed.lease.generation == 2
        assert pushed.lease.credential_name == first.lease.credential_name
        new = pushed.credential.values
        assert new["username"] != old["username"]
        log_in(postgres, new)
        log_in(postgres, old)  # before the Ack the old credential still works
        assert state_of(broker, first.lease.id) == LeaseState.REVOKING

        await agent.ack(pushed.lease)
        revoked = (await agent.next()).revoked
        assert (revoked.lease_id, revoked.reason) == (first.lease.id, "rotated")
        await until(
            lambda: revoked_and_dead(broker, postgres, first.lease.id, old),
            "old lease revoked and its login refused",
        )
        log_in(postgres, new)
        agent.close()

    await broker.server.stop(1)  # signs a checkpoint of the chain with Vault transit
    records = [json.loads(line) for line in broker.settings.audit.log.read_text().splitlines()]
    actions = [r["action"] for r in records]
    for expected in ("rotate", "lease.revoking", "lease.acked", "lease.revoked", "watch"):
        assert expected in actions
    rotate_record = records[actions.index("rotate")]
    assert rotate_record["who"] == {"kind": "operator", "name": SECURITY}
    assert rotate_record["policy_ids"] == ["security-operators"]
    assert new["password"] not in broker.settings.audit.log.read_text()
    store = broker.store()
    try:
        sink = StoreCheckpointSink(store.checkpoints)
        report = verify(read_log(broker.settings.audit.log), sink.list("broker"), transit)
    finally:
        store.close()
    assert report.ok, report.damage
    assert report.records == len(records)


def vault_reads(audit_log: Path, path: str) -> int:
    """Reads of `path` answered by Vault, from its file audit device's log."""
    if not audit_log.exists():
        return 0
    entries = [json.loads(line) for line in audit_log.read_text().splitlines() if line]
    return sum(
        1
        for entry in entries
        if entry.get("type") == "response"
        and entry["request"].get("path") == path
        and entry["request"].get("operation") == "read"
    )


async def test_a_kv_secrets_new_version_reaches_every_watcher_with_one_vault_read(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    root: hvac.Client,
    tmp_path: Path,
) -> None:
    """The leases of one KV secret rotated by one RotateLeases call are one batch (issue
    19, target 4): one Vault read of the new version for all of them, counted by Vault's own
    audit device, then every pod's Watch stream gets that version."""
    mount_kv(root)
    names = sorted(kube_clusters)
    tokens = [mint(kube_clusters[names[n % len(names)]], pod_prefix="kv") for n in range(FANOUT)]
    leases = [(await issue(broker, t, KV_CREDENTIAL, KV_ROLE)).lease for t in tokens]
    assert {lease.generation for lease in leases} == {1}
    async with broker_stub(broker.port, broker.ca) as stub:
        agents = [Agent(stub, token) for token in tokens]
        for agent, lease in zip(agents, leases, strict=True):
            assert (await agent.next()).rotated.lease.id == lease.id  # the snapshot
        root.secrets.kv.v2.create_or_update_secret(
            KV_PATH, secret={"color": "green", "greeting": "v2"}, mount_point=KV_MOUNT
        )
        audit_log = tmp_path / "vault-audit.log"
        root.sys.enable_audit_device("file", path="fanout", options={"file_path": str(audit_log)})
        try:
            request = rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id for lease in leases])
            async with broker.admin_channel() as channel:
                admin: Any = rotation_pb2_grpc.RotationServiceStub(channel)
                reply = await admin.RotateLeases(request)
            pushed = [(await agent.next()).rotated for agent in agents]
        finally:
            root.sys.disable_audit_device("fanout")
            for agent in agents:
                agent.close()
    assert [r.previous_lease_id for r in reply.rotations] == [lease.id for lease in leases]
    assert [p.lease.id for p in pushed] == [r.lease.id for r in reply.rotations]
    assert {p.lease.generation for p in pushed} == {2}
    assert {p.credential.values["color"] for p in pushed} == {"green"}
    assert vault_reads(audit_log, f"{KV_MOUNT}/data/{KV_PATH}") == 1


async def test_without_an_ack_the_cli_rotation_revokes_the_old_lease_after_the_grace(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    token = mint(kube_clusters["b"], pod_prefix="silent")
    first = await issue(broker, token)
    old = first.credential.values
    context = str(broker.context_file(tmp_path))
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke,
        cli,
        ["rotate", "--lease", first.lease.id, "--grace", "1s", "--context", context],
    )
    assert result.exit_code == 0, result.output
    assert f"lease {first.lease.id} rotated" in result.output
    assert "(generation 2)" in result.output

    await until(
        lambda: revoked_and_dead(broker, postgres, first.lease.id, old),
        "old lease revoked after the grace period",
    )
    again = await issue(broker, token)  # Issue hands out the new generation
    assert again.lease.generation == 2
    log_in(postgres, again.credential.values)

    unknown = await asyncio.to_thread(
        runner.invoke, cli, ["rotate", "--lease", "no-such-lease", "--context", context]
    )
    assert unknown.exit_code == NOTHING_SELECTED
    assert "matched no lease" in unknown.output


# --- the stream's end ---------------------------------------------------------------------------


async def test_the_broker_ends_a_watch_with_unauthenticated_when_its_token_expires(
    broker: Broker, kube_clusters: dict[str, KubeCluster], clock: ShiftedClock
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="expiring")  # a 600 s token
    await issue(broker, token)
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, token)
        await agent.next()  # the snapshot: the stream is open
        clock.offset = timedelta(seconds=601)  # past the token's exp, for the broker
        with pytest.raises(grpc.RpcError) as ended:
            await agent.next()
        agent.close()
    error = ended.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "TOKEN_INVALID"
    assert "reconnect with a fresh token" in (error.details() or "")


# --- renewals -------------------------------------------------------------------------------------


async def test_the_broker_renews_the_leases_of_pods_that_hold_a_watch_stream(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    clock: ShiftedClock,
    root: hvac.Client,
) -> None:
    watched = mint(kube_clusters["a"], pod_prefix="watched")
    silent = mint(kube_clusters["a"], pod_prefix="unwatched")
    mine = await issue(broker, watched)
    other = await issue(broker, silent)
    vault_ids = {}
    store = broker.store()
    try:
        for lease in (mine.lease, other.lease):
            vault_ids[lease.id] = store.leases.get(lease.id).vault_lease_id
    finally:
        store.close()

    def ttl(lease_id: str) -> int:
        return int(root.sys.read_lease(vault_ids[lease_id])["data"]["ttl"])

    before = {lease_id: ttl(lease_id) for lease_id in vault_ids}
    assert all(value <= 300 for value in before.values())  # the role's default_ttl is 5m
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, watched)
        await agent.next()
        clock.offset = timedelta(minutes=4)  # both leases now expire within the 2m window
        renewed = await broker.server.runtime.flows.renewer.renew_due()
        pushed = await agent.next()  # the agent learns the lease's new end
        agent.close()
    assert renewed == 1
    assert pushed.WhichOneof("event") == "renewed"
    assert pushed.renewed.lease_id == mine.lease.id
    assert ttl(mine.lease.id) > before[mine.lease.id]  # renewed by 30m
    assert ttl(other.lease.id) <= before[other.lease.id]  # no stream, no heartbeat
    store = broker.store()
    try:
        expires_at = store.leases.get(mine.lease.id).expires_at
    finally:
        store.close()
    assert expires_at is not None
    assert expires_at > mine.lease.expires_at.ToDatetime().replace(tzinfo=expires_at.tzinfo)
    assert pushed.renewed.expires_at.ToDatetime() == expires_at.replace(tzinfo=None)


async def test_renew_extends_the_callers_own_lease_and_not_another_pods(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    owner = mint(kube_clusters["c"], pod_prefix="script")
    stranger = mint(kube_clusters["c"], pod_prefix="stranger")
    issued = await issue(broker, owner)
    async with broker_stub(broker.port, broker.ca) as stub:
        reply = await stub.Renew(
            broker_pb2.RenewRequest(lease_id=issued.lease.id), metadata=bearer(owner)
        )
        assert reply.lease.id == issued.lease.id
        assert reply.lease.role == ROLE
        assert reply.lease.expires_at.ToDatetime() > issued.lease.expires_at.ToDatetime()
        with pytest.raises(grpc.RpcError) as denied:
            await stub.Renew(
                broker_pb2.RenewRequest(lease_id=issued.lease.id), metadata=bearer(stranger)
            )
    assert denied.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(denied.value).reason == "NOT_FOUND"
