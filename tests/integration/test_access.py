"""Just-in-time access (AccessService) end to end on the bed: a broker started in-process
with the bed's Vault (AppRole with docs/vault-policy.hcl), PostgreSQL behind the keyferry
database mount of docs/examples/roles.yaml, the example policy set as it is, and operators
on the mutual-TLS admin listener (no member clusters, except where pods are the point):

- alice (developers, security): requests; may approve others' grants, never her own;
- bob (security): approves, denies, revokes;
- carol (developers): requests, has no permit to approve.

The broker's clock is shifted by the tests (`ShiftedClock`), so a grant ends because the
test says so, never because the test waited. Waiting for Vault and PostgreSQL to act on a
revocation is a bounded poll (`until`), and no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import psycopg
import pytest
from google.protobuf import duration_pb2
from typer.testing import CliRunner

from broker.api.v1 import access_pb2, access_pb2_grpc
from broker.audit import StoreCheckpointSink, read_log, verify
from broker.backends.transit import TransitSigner
from broker.cli.main import app as cli
from broker.identity.admin_pki import AdminCa
from broker.store import GrantState, LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import DOCS, ROLE, Broker, config, log_in, start_broker
from tests.scene.clocks import ShiftedClock
from tests.scene.polling import until
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info

pytestmark = pytest.mark.bed
ALICE, BOB, CAROL = "alice", "bob", "carol"
GROUPS = {ALICE: ["developers", "security"], BOB: ["security"], CAROL: ["developers"]}
REASON = "INC-4711: orders replica lag, read-only look"
EXAMPLE_POLICIES = DOCS / "examples" / "policies.cedar"


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


async def start(
    folder: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    clock: ShiftedClock,
    policies: Path = EXAMPLE_POLICIES,
    clusters: dict[str, KubeCluster] | None = None,
) -> Broker:
    data = config(folder, vault, approle, clusters or {}, sqlite_url(folder))
    data["policies"] = [str(policies)]
    data["revocation"] = {"interval": "1s"}
    data["rotation"] = {"resume_interval": "1s"}
    data["access"] = {"max_duration": "4h", "approval_wait": "30m", "expiry_interval": "1s"}
    ca = AdminCa.load(folder / "admin-ca")
    for name, groups in GROUPS.items():
        ca.issue_operator(name, groups)
    return await start_broker(data, folder, clock)


@pytest.fixture
async def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    orders_db: None,
    transit: TransitSigner,
    clock: ShiftedClock,
) -> AsyncIterator[Broker]:
    """Unlike the scene's broker: no member cluster, the access operators, fast jobs."""
    running = await start(tmp_path, vault, approle, clock)
    yield running
    await running.server.stop(1)


async def call(broker: Broker, operator: str, method: str, request: Any) -> Any:
    async with broker.admin_channel(operator) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        return await getattr(stub, method)(request, timeout=30)


async def request_grant(broker: Broker, operator: str = ALICE, minutes: int = 30) -> Any:
    duration = duration_pb2.Duration(seconds=minutes * 60)
    request = access_pb2.RequestGrantRequest(role=ROLE, duration=duration, reason=REASON)
    reply = await call(broker, operator, "RequestGrant", request)
    return reply.grant


async def approved_grant(broker: Broker, minutes: int = 30) -> Any:
    grant = await request_grant(broker, ALICE, minutes)
    reply = await call(
        broker, BOB, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id)
    )
    return reply.grant


async def issue_for(broker: Broker, grant_id: str, operator: str = ALICE) -> Any:
    return await call(
        broker, operator, "IssueForGrant", access_pb2.IssueForGrantRequest(grant_id=grant_id)
    )


def refused(postgres: PostgresServer, values: Any) -> bool:
    try:
        log_in(postgres, values)
    except psycopg.OperationalError:
        return True
    return False


async def login_dies(postgres: PostgresServer, values: Any) -> None:
    async def probe() -> bool:
        return refused(postgres, values)

    await until(probe, "the grant's PostgreSQL login stops working")


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_log(broker.settings.audit.log) if line]


def grant_state(broker: Broker, grant_id: str) -> GrantState:
    store = broker.store()
    try:
        return store.grants.get(grant_id).state
    finally:
        store.close()


def lease_state(broker: Broker, lease_id: str) -> LeaseState:
    store = broker.store()
    try:
        return store.leases.get(lease_id).state
    finally:
        store.close()


# --- the flow ---------------------------------------------------------------------------------


async def test_a_grant_approved_by_another_operator_issues_a_working_login_ending_with_it(
    broker: Broker, postgres: PostgresServer, root: hvac.Client, transit: TransitSigner
) -> None:
    grant = await request_grant(broker)
    assert grant.state == access_pb2.GRANT_STATE_PENDING
    assert (grant.requester, grant.role, grant.reason) == (ALICE, ROLE, REASON)

    with pytest.raises(grpc.RpcError) as pending:
        await issue_for(broker, grant.id)
    assert pending.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    approved = await call(
        broker, BOB, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id)
    )
    assert approved.grant.state == access_pb2.GRANT_STATE_APPROVED
    assert approved.grant.decided_by == BOB
    ends = approved.grant.expires_at.ToDatetime(UTC)

    issued = await issue_for(broker, grant.id)
    values = dict(issued.credential.values)
    log_in(postgres, values)
    assert issued.grant.state == access_pb2.GRANT_STATE_ISSUED
    assert issued.grant.lease_id == issued.lease.id
    assert issued.lease.role == ROLE

    # The Vault lease was renewed past the role's 5m default to end with the grant.
    vault_lease = root.sys.read_lease(lease_id=lease_vault_id(broker, issued.lease.id))["data"]
    vault_end = datetime.fromisoformat(vault_lease["expire_time"])
    assert vault_end <= ends + timedelta(seconds=2)
    assert vault_end > datetime.now(UTC) + timedelta(minutes=10)

    again = await issue_for(broker, grant.id)  # idempotent: the same credential, no new lease
    assert again.lease.id == issued.lease.id
    assert dict(again.credential.values) == values

    with pytest.raises(grpc.RpcError) as stranger:
        await issue_for(broker, grant.id, CAROL)
    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED

    records = audit_records(broker)
    steps = [(r["action"], r["who"]["name"]) for r in records if r["pod"] == grant.id]
    assert ("access.request", ALICE) in steps
    assert ("access.approve", BOB) in steps
    assert ("lease.active", ALICE) in steps
    assert ("access.issue", ALICE) in steps
    approve = next(r for r in records if r["action"] == "access.approve")
    assert approve["decision"] == "allow"
    assert approve["policy_ids"] == ["security-decides-access"]
    assert approve["role"] == ROLE
    assert approve["fingerprints"]["reason"].startswith("hmac-sha256:")
    assert REASON not in broker.settings.audit.log.read_text()
    assert values["password"] not in broker.settings.audit.log.read_text()
    store = broker.store()
    try:
        sink = StoreCheckpointSink(store.checkpoints)
        report = verify(read_log(broker.settings.audit.log), sink.list("broker"), transit)
    finally:
        store.close()
    assert report.ok, report.damage


def lease_vault_id(broker: Broker, lease_id: str) -> str:
    store = broker.store()
    try:
        vault_lease_id = store.leases.get(lease_id).vault_lease_id
    finally:
        store.close()
    assert vault_lease_id is not None
    return vault_lease_id


# --- who decides ------------------------------------------------------------------------------


async def test_approving_your_own_grant_is_refused_with_a_reason_and_audited(
    broker: Broker,
) -> None:
    grant = await request_grant(broker, ALICE)
    for method, request in (
        ("ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id)),
        ("DenyGrant", access_pb2.DenyGrantRequest(grant_id=grant.id)),
    ):
        with pytest.raises(grpc.RpcError) as own:
            await call(broker, ALICE, method, request)
        assert own.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(own.value).reason == "SELF_APPROVAL"
        assert "someone else" in (own.value.details() or "")
    assert grant_state(broker, grant.id) == GrantState.PENDING

    denied = [r for r in audit_records(broker) if r["action"] in ("access.approve", "access.deny")]
    assert [(r["who"]["name"], r["decision"], r["reason"]) for r in denied] == [
        (ALICE, "deny", "SELF_APPROVAL"),
        (ALICE, "deny", "SELF_APPROVAL"),
    ]
    assert denied[0]["policy_ids"] == ["no-self-approval"]  # the example policy forbids it too


async def test_the_broker_refuses_self_approval_even_when_a_policy_would_permit_it(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    orders_db: None,
    transit: TransitSigner,
    clock: ShiftedClock,
) -> None:
    text = EXAMPLE_POLICIES.read_text()
    permissive = tmp_path / "policies.cedar"
    permissive.write_text(text[: text.index('@id("no-self-approval")')])
    broker = await start(tmp_path, vault, approle, clock, permissive)
    try:
        grant = await request_grant(broker, ALICE)
        with pytest.raises(grpc.RpcError) as own:
            await call(
                broker, ALICE, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id)
            )
        assert error_info(own.value).reason == "SELF_APPROVAL"
        record = next(r for r in audit_records(broker) if r["action"] == "access.approve")
        assert record["policy_ids"] == ["security-decides-access"]  # Cedar said yes...
        assert (record["decision"], record["reason"]) == ("deny", "SELF_APPROVAL")  # ...code no
        assert grant_state(broker, grant.id) == GrantState.PENDING
    finally:
        await broker.server.stop(1)


async def test_an_operator_without_a_permit_cannot_approve(broker: Broker) -> None:
    grant = await request_grant(broker, ALICE)
    with pytest.raises(grpc.RpcError) as refused_call:
        await call(broker, CAROL, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id))
    assert refused_call.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(refused_call.value).reason == "POLICY_DENIED"
    assert grant_state(broker, grant.id) == GrantState.PENDING
    record = next(r for r in audit_records(broker) if r["action"] == "access.approve")
    assert (record["who"]["name"], record["decision"]) == (CAROL, "deny")


async def test_a_request_outside_the_limits_or_the_policy_is_refused(broker: Broker) -> None:
    too_long = access_pb2.RequestGrantRequest(
        role=ROLE, duration=duration_pb2.Duration(seconds=5 * 3600), reason=REASON
    )
    with pytest.raises(grpc.RpcError) as long_call:
        await call(broker, ALICE, "RequestGrant", too_long)
    assert long_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(long_call.value).metadata["field"] == "duration"
    assert "access.max_duration" in (long_call.value.details() or "")

    no_reason = access_pb2.RequestGrantRequest(
        role=ROLE, duration=duration_pb2.Duration(seconds=600), reason="  "
    )
    with pytest.raises(grpc.RpcError) as reasonless:
        await call(broker, ALICE, "RequestGrant", no_reason)
    assert error_info(reasonless.value).metadata["field"] == "reason"

    with pytest.raises(grpc.RpcError) as not_a_developer:
        await request_grant(broker, BOB)
    assert not_a_developer.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- the end of a grant -----------------------------------------------------------------------


async def test_a_grant_expires_its_login_dies_and_it_never_issues_again(
    broker: Broker, postgres: PostgresServer, clock: ShiftedClock, root: hvac.Client
) -> None:
    grant = await approved_grant(broker, minutes=2)
    issued = await issue_for(broker, grant.id)
    values = dict(issued.credential.values)
    log_in(postgres, values)
    # Shorter than the role's 5m default: the Vault lease was renewed down to the grant's end.
    vault_lease = root.sys.read_lease(lease_id=lease_vault_id(broker, issued.lease.id))["data"]
    vault_end = datetime.fromisoformat(vault_lease["expire_time"])
    assert vault_end <= grant.expires_at.ToDatetime(UTC) + timedelta(seconds=2)

    clock.offset = timedelta(minutes=3)  # past the grant's end; the expiry job notices

    async def expired() -> bool:
        return grant_state(broker, grant.id) == GrantState.EXPIRED

    async def lease_revoked() -> bool:
        return lease_state(broker, issued.lease.id) == LeaseState.REVOKED

    await until(expired, "the expiry job expires the grant")
    await until(lease_revoked, "the grant's lease is revoked")
    await login_dies(postgres, values)
    with pytest.raises(grpc.RpcError) as late:
        await issue_for(broker, grant.id)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (late.value.details() or "")
    actions = [
        (r["action"], r["who"]["kind"]) for r in audit_records(broker) if r["pod"] == grant.id
    ]
    assert ("access.expire", "system") in actions
    assert ("lease.revoked", "system") in actions


async def test_an_expired_grant_is_refused_on_the_call_itself(
    broker: Broker, postgres: PostgresServer, clock: ShiftedClock
) -> None:
    grant = await approved_grant(broker, minutes=2)
    issued = await issue_for(broker, grant.id)
    values = dict(issued.credential.values)
    await broker.server.runtime.stop_jobs()  # no expiry job: the call's own check must act
    clock.offset = timedelta(minutes=3)
    with pytest.raises(grpc.RpcError) as late:
        await issue_for(broker, grant.id)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert grant_state(broker, grant.id) == GrantState.EXPIRED
    assert refused(postgres, values)  # revoked before the refusal was sent


async def test_revoking_a_grant_kills_its_credential(
    broker: Broker, postgres: PostgresServer
) -> None:
    grant = await approved_grant(broker)
    issued = await issue_for(broker, grant.id)
    values = dict(issued.credential.values)
    log_in(postgres, values)

    reply = await call(broker, BOB, "RevokeGrant", access_pb2.RevokeGrantRequest(grant_id=grant.id))
    assert reply.grant.state == access_pb2.GRANT_STATE_REVOKED
    assert reply.grant.ended_by == BOB
    assert list(reply.pending_lease_ids) == []
    assert refused(postgres, values)
    assert lease_state(broker, issued.lease.id) == LeaseState.REVOKED
    with pytest.raises(grpc.RpcError) as after:
        await issue_for(broker, grant.id)
    assert after.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    again = await call(broker, BOB, "RevokeGrant", access_pb2.RevokeGrantRequest(grant_id=grant.id))
    assert again.grant.state == access_pb2.GRANT_STATE_REVOKED  # idempotent


async def test_a_denied_grant_never_issues(broker: Broker) -> None:
    grant = await request_grant(broker)
    reply = await call(broker, BOB, "DenyGrant", access_pb2.DenyGrantRequest(grant_id=grant.id))
    assert reply.grant.state == access_pb2.GRANT_STATE_DENIED
    with pytest.raises(grpc.RpcError) as denied:
        await issue_for(broker, grant.id)
    assert denied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "denied" in (denied.value.details() or "")
    with pytest.raises(grpc.RpcError) as late_approval:
        await call(broker, BOB, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=grant.id))
    assert late_approval.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    refusal = [
        r for r in audit_records(broker) if r["action"] == "access.issue" and r["pod"] == grant.id
    ]
    assert [(r["who"]["name"], r["reason"]) for r in refusal] == [(ALICE, "GRANT_DENIED")]


# --- reading grants ---------------------------------------------------------------------------


async def test_list_and_get_show_each_operator_what_cedar_lets_them_see(broker: Broker) -> None:
    mine = await request_grant(broker, CAROL)
    other = await request_grant(broker, ALICE)
    listed = await call(broker, CAROL, "ListGrants", access_pb2.ListGrantsRequest())
    assert [g.id for g in listed.grants] == [mine.id]
    everyone = await call(broker, BOB, "ListGrants", access_pb2.ListGrantsRequest())
    assert {g.id for g in everyone.grants} == {mine.id, other.id}
    pending = access_pb2.ListGrantsRequest(states=[access_pb2.GRANT_STATE_APPROVED])
    assert list((await call(broker, BOB, "ListGrants", pending)).grants) == []
    got = await call(broker, BOB, "GetGrant", access_pb2.GetGrantRequest(grant_id=mine.id))
    assert got.grant.reason == REASON
    with pytest.raises(grpc.RpcError) as hidden:
        await call(broker, CAROL, "GetGrant", access_pb2.GetGrantRequest(grant_id=other.id))
    assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as missing:
        await call(broker, BOB, "GetGrant", access_pb2.GetGrantRequest(grant_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


# --- the CLI ----------------------------------------------------------------------------------


async def test_the_cli_requests_approves_issues_to_a_private_file_and_revokes(
    broker: Broker, postgres: PostgresServer, tmp_path: Path
) -> None:
    runner = CliRunner()
    alice = ["--context", str(broker.context_file(tmp_path, ALICE))]
    bob = ["--context", str(broker.context_file(tmp_path, BOB))]

    def run(*args: str) -> Any:
        return runner.invoke(cli, list(args))

    requested = await to_thread(
        run,
        "access",
        "request",
        ROLE,
        "--duration",
        "30m",
        "--reason",
        REASON,
        "-o",
        "json",
        *alice,
    )
    assert requested.exit_code == 0, requested.output
    grant_id = cli_json(requested)["id"]

    own = await to_thread(run, "access", "approve", grant_id, *alice)
    assert own.exit_code == 1
    assert "someone else" in own.output

    approved = await to_thread(run, "access", "approve", grant_id, *bob)
    assert approved.exit_code == 0, approved.output

    target = tmp_path / "grant.json"
    issued = await to_thread(run, "access", "issue", grant_id, "--to", str(target), *alice)
    assert issued.exit_code == 0, issued.output
    assert target.stat().st_mode & 0o777 == 0o600
    values = json.loads(target.read_text())
    assert values["password"] not in issued.output
    log_in(postgres, values)

    hidden = await to_thread(run, "access", "issue", grant_id, *alice)
    assert hidden.exit_code == 0, hidden.output
    assert values["password"] not in hidden.output
    shown = await to_thread(run, "access", "issue", grant_id, "--show-secrets", *alice)
    assert values["password"] in shown.output

    listed = await to_thread(run, "access", "list", "-o", "json", *bob)
    assert [g["state"] for g in cli_json(listed)] == ["issued"]

    revoked = await to_thread(run, "access", "revoke", grant_id, *bob)
    assert revoked.exit_code == 0, revoked.output
    assert refused(postgres, values)
    got = await to_thread(run, "access", "get", grant_id, "-o", "json", *alice)
    assert cli_json(got)["state"] == "revoked"


def cli_json(result: Any) -> Any:
    """The JSON a command printed; the in-process broker's log lines share its stdout."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line[:1] in ("{", "["))
    return json.loads("\n".join(lines[start:]))


async def to_thread(run: Any, *args: str) -> Any:
    return await asyncio.to_thread(run, *args)


# --- beside pods ------------------------------------------------------------------------------


async def test_pod_watches_and_sweeps_leave_a_grants_lease_alone(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    orders_db: None,
    transit: TransitSigner,
    clock: ShiftedClock,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
) -> None:
    broker = await start(tmp_path, vault, approle, clock, clusters=kube_clusters)
    try:
        grant = await approved_grant(broker)
        issued = await issue_for(broker, grant.id)
        assert await broker.server.runtime.pods.sweep() == 0  # no pod owns it: nothing ends
        assert lease_state(broker, issued.lease.id) == LeaseState.ACTIVE
        log_in(postgres, dict(issued.credential.values))
    finally:
        await broker.server.stop(1)
