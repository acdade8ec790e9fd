"""The lease engine's batch form and rotation's use of it, on an in-memory SQLite store with
a fake backend (lease_bench.py): the leases of a shared KV secret rotated with one Vault
read and one store transaction for all of them, every pod told; failures undone per lease
as a single issue would undo them; a role that is not shared still rotated one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from broker.errors import InvalidRequest, StoreUnavailable, VaultUnavailable
from broker.models import PodKey, RoleSpec
from broker.policy import Operator
from broker.service.admin.rotation import RotationFlow
from broker.service.common.role_catalog import RoleCatalog
from broker.service.engine.lease_engine import IssueOrder, TrackedCredential
from broker.service.events.hub import LeaseRotated
from broker.store import LeaseRecord, LeaseRequest, LeaseState, PendingLease
from tests.unit.lease_bench import ROLES, WHO, Bench, FailingOnce

KV, DB = ROLES["kv"], ROLES["database"]
SECURITY = Operator(name="sam", groups=("security",))
PODS = 5


@pytest.fixture(autouse=True)
async def roles(bench: Bench) -> None:
    await RoleCatalog(bench.core.store.roles).apply([KV, DB])


def pod_request(n: int, role: RoleSpec) -> LeaseRequest:
    return LeaseRequest(
        cluster="abc"[n % 3],
        namespace="orders",
        service_account="api",
        pod_name=f"api-{n}",
        pod_uid=f"uid-{n}",
        credential="config" if role is KV else "orders-db",
        role=role.name,
    )


async def pending_rows(bench: Bench, role: RoleSpec, count: int = PODS) -> list[LeaseRecord]:
    rows = []
    for n in range(count):
        begun = await bench.engine.begin(pod_request(n, role))
        assert isinstance(begun, PendingLease)
        rows.append(begun.lease)
    return rows


async def active_leases(bench: Bench, role: RoleSpec, count: int = PODS) -> list[LeaseRecord]:
    rows = await pending_rows(bench, role, count)
    tracked = await bench.engine.issue_many([IssueOrder(row, role, WHO, "r0") for row in rows])
    assert all(isinstance(t, TrackedCredential) for t in tracked)
    return [t.lease for t in tracked if isinstance(t, TrackedCredential)]


def counted(bench: Bench, monkeypatch: pytest.MonkeyPatch, step: str) -> list[int]:
    """Count calls of one store step (each is one transaction)."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(bench.store.leases, step)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.store.leases, step, counting)
    return calls


def rotation_flow(bench: Bench, concurrency: int = 2) -> RotationFlow:
    return RotationFlow(
        bench.core,
        catalog=RoleCatalog(bench.core.store.roles),
        hub=bench.hub,
        grace=timedelta(minutes=1),
        concurrency=concurrency,
        resume_after=timedelta(minutes=1),
    )


# -- the engine's batch form ---------------------------------------------------------------


async def test_a_shared_kv_secret_is_read_once_and_completed_in_one_transaction(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await pending_rows(bench, KV)
    batches = counted(bench, monkeypatch, "complete_issues")
    singles = counted(bench, monkeypatch, "complete_issue")
    tracked = await bench.engine.issue_many([IssueOrder(row, KV, WHO, "r") for row in rows])
    assert bench.backends.kv.reads == 1
    assert (len(batches), len(singles)) == (1, 0)
    assert [t.lease.state for t in tracked if isinstance(t, TrackedCredential)] == [
        LeaseState.ACTIVE
    ] * PODS
    secrets = {
        t.credential.reveal()["password"] for t in tracked if isinstance(t, TrackedCredential)
    }
    assert len(secrets) == 1  # one version for every pod
    assert sorted(r["lease_id"] for r in bench.records("lease.active")) == sorted(
        row.id for row in rows
    )


async def test_leases_of_a_role_that_is_not_shared_ask_vault_each(bench: Bench) -> None:
    rows = await pending_rows(bench, DB)
    tracked = await bench.engine.issue_many([IssueOrder(row, DB, WHO, "r") for row in rows])
    assert bench.backends.database.reads == PODS
    assert len({t.lease.vault_lease_id for t in tracked if isinstance(t, TrackedCredential)}) == (
        PODS
    )


async def test_a_shared_read_vault_refuses_fails_every_row_of_it(bench: Bench) -> None:
    rows = await pending_rows(bench, KV)
    bench.backends.kv.fail_issue = VaultUnavailable("Vault is sealed")
    tracked = await bench.engine.issue_many([IssueOrder(row, KV, WHO, "r") for row in rows])
    assert all(isinstance(t, VaultUnavailable) for t in tracked)
    assert bench.backends.kv.reads == 1
    assert {bench.state(row.id) for row in rows} == {LeaseState.FAILED}
    assert len(bench.records("lease.failed")) == PODS


async def test_a_store_failure_after_vault_undoes_each_lease_of_the_batch(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await pending_rows(bench, DB, 3)
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issues", FailingOnce(leases.complete_issues, StoreUnavailable("gone"))
    )
    tracked = await bench.engine.issue_many([IssueOrder(row, DB, WHO, "r") for row in rows])
    assert all(isinstance(t, StoreUnavailable) for t in tracked)
    assert bench.backends.database.alive == set()  # each revoked at Vault first
    assert len(bench.backends.database.revoked) == 3
    assert {bench.state(row.id) for row in rows} == {LeaseState.FAILED}


async def test_a_row_revoked_while_vault_answered_is_not_handed_out(bench: Bench) -> None:
    rows = await pending_rows(bench, KV, 3)
    bench.store.leases.mark_revoking(rows[1].id)  # its pod went away meanwhile
    tracked = await bench.engine.issue_many([IssueOrder(row, KV, WHO, "r") for row in rows])
    assert [type(t).__name__ for t in tracked] == [
        "TrackedCredential",
        "LeaseStateConflict",
        "TrackedCredential",
    ]
    assert bench.state(rows[1].id) is LeaseState.REVOKING


# -- rotation ------------------------------------------------------------------------------


async def test_rotating_a_shared_secrets_leases_reads_vault_once_and_tells_every_pod(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = await active_leases(bench, KV)
    reads = bench.backends.kv.reads
    begins = counted(bench, monkeypatch, "begin_rotations")
    batches = counted(bench, monkeypatch, "complete_issues")
    streams = [bench.hub.subscribe(PodKey(lease.cluster, lease.pod_uid)) for lease in leases]
    subscriptions = [stream.__enter__() for stream in streams]
    try:
        rotated = await rotation_flow(bench).rotate(
            SECURITY, [lease.id for lease in leases], None, "r2"
        )
        events = [sub.queue.get_nowait() for sub in subscriptions]
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
    assert bench.backends.kv.reads == reads + 1
    assert (len(begins), len(batches)) == (1, 1)
    assert [r.previous_lease_id for r in rotated] == [lease.id for lease in leases]
    assert {r.lease.generation for r in rotated} == {2}
    assert all(isinstance(event, LeaseRotated) for event in events)
    assert [e.lease.id for e in events if isinstance(e, LeaseRotated)] == [
        r.lease.id for r in rotated
    ]
    assert {bench.state(lease.id) for lease in leases} == {LeaseState.REVOKING}
    revoking = [r for r in bench.records("lease.revoking") if r["request_id"] == "r2"]
    assert sorted(r["lease_id"] for r in revoking) == sorted(lease.id for lease in leases)
    assert {r["reason"] for r in revoking} == {"ROTATED"}
    assert len([r for r in bench.records("rotate") if r["decision"] == "allow"]) == PODS


async def test_a_second_rotation_of_the_same_leases_reports_them_rotated_already(
    bench: Bench,
) -> None:
    leases = await active_leases(bench, KV, 2)
    ids = [lease.id for lease in leases]
    first = await rotation_flow(bench).rotate(SECURITY, ids, None, "r1")
    again = await rotation_flow(bench).rotate(SECURITY, ids, None, "r2")
    assert [r.already_rotated for r in again] == [True, True]
    assert [r.lease.id for r in again] == [r.lease.id for r in first]


async def test_a_mixed_call_rotates_kv_together_and_database_one_by_one(bench: Bench) -> None:
    kv = await active_leases(bench, KV, 2)
    db = await active_leases(bench, DB, 2)
    reads = (bench.backends.kv.reads, bench.backends.database.reads)
    ids = [kv[0].id, db[0].id, kv[1].id, db[1].id]
    rotated = await rotation_flow(bench).rotate(SECURITY, ids, None, "r")
    assert [r.previous_lease_id for r in rotated] == ids
    assert (bench.backends.kv.reads, bench.backends.database.reads) == (
        reads[0] + 1,
        reads[1] + 2,
    )


async def test_a_failed_shared_read_raises_and_keeps_every_old_generation(bench: Bench) -> None:
    leases = await active_leases(bench, KV, 3)
    bench.backends.kv.fail_issue = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await rotation_flow(bench).rotate(SECURITY, [lease.id for lease in leases], None, "r")
    assert {bench.state(lease.id) for lease in leases} == {LeaseState.ACTIVE}


async def test_a_lease_that_is_no_longer_active_is_refused_naming_its_field(
    bench: Bench,
) -> None:
    leases = await active_leases(bench, KV, 2)
    bench.store.leases.mark_revoking(leases[1].id)
    with pytest.raises(InvalidRequest) as refused:
        await rotation_flow(bench).rotate(SECURITY, [lease.id for lease in leases], None, "r")
    assert refused.value.field == "lease_ids[1]"


async def test_scheduled_rotation_of_a_shared_secret_reads_vault_once(bench: Bench) -> None:
    leases = await active_leases(bench, KV)
    reads = bench.backends.kv.reads
    done = await rotation_flow(bench, concurrency=1).rotate_scheduled(leases, "r")
    assert done == PODS
    assert bench.backends.kv.reads == reads + 1
    assert bench.store.leases.rotation_requests(bench.clock() + timedelta(days=1)) == []


async def test_an_ack_settles_a_rotated_kv_lease_in_one_store_write(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod's Ack brings the old generation's end forward; nothing at Vault holds a KV
    value, so the revoking row is settled at once (no mark_revoking first)."""
    [lease] = await active_leases(bench, KV, 1)
    await rotation_flow(bench).rotate(SECURITY, [lease.id], None, "r1")
    old = bench.store.leases.get(lease.id)
    assert old.state is LeaseState.REVOKING

    def not_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("settled at once, not marked revoking again")

    monkeypatch.setattr(bench.store.leases, "mark_revoking", not_called)
    revoked = await bench.engine.revoke_now(old, WHO, "r2")
    assert revoked.state is LeaseState.REVOKED
    [record] = [r for r in bench.records("lease.revoked") if r["request_id"] == "r2"]
    assert record["reason"] == "ROTATED"
