"""The flows on the lease engine, on an in-memory SQLite store with a fake backend
(lease_bench.py): Issue and Release as a pod calls them, RotateLeases as an operator
calls it, and a grant's issue, each with its undo paths. Only the caller's token check is
a fake (a pod that proves itself by name); Cedar, the audit trail and the store are real.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import cast

import pytest

from broker.backends import Backends
from broker.errors import (
    FailedPrecondition,
    LimitExceeded,
    PermissionDenied,
    PodOfAnotherCluster,
    StoreUnavailable,
    Unauthenticated,
    VaultUnavailable,
)
from broker.models import IssueContext
from broker.policy import Operator, Workload
from broker.service.admin.access_grants import AccessFlow
from broker.service.admin.rotation import RotationFlow
from broker.service.common.callers import Callers, Refused
from broker.service.common.grant_terms import check_grant_ask, new_grant
from broker.service.common.role_catalog import RoleCatalog
from broker.service.engine.lease_engine import IssueOrder
from broker.service.events.hub import LeaseRotated
from broker.service.workload.issue import IssueFlow, IssueLimits
from broker.service.workload.limits import IssueRates, LeaseCallRates
from broker.service.workload.release import ReleaseFlow
from broker.settings import AccessSettings, LimitsSettings
from broker.store import LeaseNotFound, LeaseRequest, LeaseState, PendingLease
from tests.unit.lease_bench import (
    ROLES,
    START,
    WHO,
    Bench,
    FailingOnce,
)

ROLE = ROLES["database"]  # orders-db-ro: the example policies let namespace orders issue it
API = Workload(cluster="a", namespace="orders", service_account="api", pod="api-0", pod_uid="u0")
OTHER = Workload(cluster="a", namespace="orders", service_account="api", pod="api-1", pod_uid="u1")
BILLING = Workload(
    cluster="a", namespace="billing", service_account="job", pod="job-0", pod_uid="u2"
)
SECURITY = Operator(name="sam", groups=("security",))
DEVELOPER = Operator(name="dev", groups=("developers",))


class FakeCallers:
    """Tokens are the pods' names; a token of no known pod is refused (and reported)."""

    def __init__(self, *pods: Workload) -> None:
        self._pods = {pod.pod: pod for pod in pods}

    async def authenticate(
        self, token: str, *, allow_terminating: bool = False, refused: Refused | None = None
    ) -> Workload:
        pod = self._pods.get(token)
        if pod is None:
            error = Unauthenticated("no such pod")
            if refused is not None:
                await refused(error, None)
            raise error
        return pod


@pytest.fixture(autouse=True)
async def roles(bench: Bench) -> None:
    await RoleCatalog(bench.core.store.roles).apply([ROLE, ROLES["kv"]])


def issue_flow(bench: Bench, *pods: Workload, limits: IssueLimits | None = None) -> IssueFlow:
    return IssueFlow(
        bench.core,
        callers=cast("Callers", FakeCallers(*(pods or (API, OTHER, BILLING)))),
        catalog=RoleCatalog(bench.core.store.roles),
        limits=limits or IssueLimits(per_pod=2, per_cluster=100),
        rates=IssueRates(LimitsSettings(), bench.clock),
    )


def release_flow(bench: Bench) -> ReleaseFlow:
    callers = cast("Callers", FakeCallers(API, OTHER))
    return ReleaseFlow(
        bench.core, callers=callers, rates=LeaseCallRates(LimitsSettings(), bench.clock)
    )


# -- Issue ---------------------------------------------------------------------------------


async def test_issue_audits_the_decision_then_the_lease_and_replays_it(bench: Bench) -> None:
    issue = issue_flow(bench)
    first = await issue.issue("api-0", "orders-db", ROLE.name, "r1")
    assert (first.replayed, first.lease.state, first.renewable) == (False, LeaseState.ACTIVE, True)
    assert [(r["action"], r["decision"]) for r in bench.records() if r["request_id"] == "r1"] == [
        ("issue", "allow"),
        ("lease.active", None),
    ]
    again = await issue.issue("api-0", "orders-db", ROLE.name, "r2")
    assert again.replayed
    assert again.lease.id == first.lease.id
    assert again.credential.reveal() == first.credential.reveal()
    assert len(bench.backends.database.alive) == 1  # Vault asked once


async def test_a_pod_uid_live_in_another_cluster_is_refused_and_audited(bench: Bench) -> None:
    """A member cluster's API server can mint a token with any UID: one naming a pod of
    cluster a (its UID, namespace, service account and name) gets no replay and no lease."""
    victim = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    rogue = API.model_copy(update={"cluster": "rogue"})
    with pytest.raises(PodOfAnotherCluster) as refused:
        await issue_flow(bench, rogue).issue("api-0", "orders-db", ROLE.name, "r2")
    assert (refused.value.cluster, refused.value.holders) == ("rogue", frozenset({"a"}))
    assert [(r["action"], r["decision"], r["reason"]) for r in bench.records()][-1] == (
        "issue",
        "deny",
        "TOKEN_INVALID",
    )
    assert bench.records()[-1]["who"]["name"].startswith("rogue/")
    assert bench.store.leases.count_live() == 1
    assert len(bench.backends.database.alive) == 1  # Vault not asked for the rogue
    assert bench.store.leases.find_live("rogue", API.pod_uid, "orders-db") is None
    again = await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r3")
    assert (again.replayed, again.lease.id) == (True, victim.id)  # the real pod unaffected


async def test_issue_refused_by_cedar_writes_no_row_and_asks_no_vault(bench: Bench) -> None:
    with pytest.raises(PermissionDenied):
        await issue_flow(bench).issue("job-0", "orders-db", ROLE.name, "r")
    assert bench.store.leases.count_live() == 0
    assert bench.backends.database.alive == set()
    assert [r["decision"] for r in bench.records("issue")] == ["deny"]


async def test_issue_when_vault_refuses_fails_the_row(bench: Bench) -> None:
    bench.backends.database.fail_issue = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r")
    [failed] = bench.records("lease.failed")
    assert bench.state(failed["lease_id"]) is LeaseState.FAILED
    assert bench.backends.database.alive == set()


async def test_issue_when_the_store_fails_after_vault_revokes_first(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issue", FailingOnce(leases.complete_issue, StoreUnavailable("gone"))
    )
    issue = issue_flow(bench)
    with pytest.raises(StoreUnavailable):
        await issue.issue("api-0", "orders-db", ROLE.name, "r1")
    assert bench.backends.database.alive == set()
    assert len(bench.backends.database.revoked) == 1
    [failed] = bench.records("lease.failed")
    assert bench.state(failed["lease_id"]) is LeaseState.FAILED
    retried = await issue.issue("api-0", "orders-db", ROLE.name, "r2")  # a retry issues anew
    assert not retried.replayed
    assert retried.lease.id != failed["lease_id"]


def owner_goes_away(bench: Bench, credential: str) -> Callable[[IssueContext], None]:
    """While Vault answers: the row turns revoking (its pod or grant ended)."""

    def goes_away(context: IssueContext) -> None:
        live = bench.store.leases.find_live(context.cluster, context.pod_uid, credential)
        assert live is not None
        bench.store.leases.mark_revoking(live.id)

    return goes_away


async def test_issue_of_a_pod_going_away_meanwhile_hands_nothing_out(bench: Bench) -> None:
    bench.backends.database.during_issue = owner_goes_away(bench, "orders-db")
    with pytest.raises(Unauthenticated):
        await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r")
    assert bench.backends.database.alive == set()  # revoked at once, not handed out


async def test_issue_past_the_pods_cap_is_refused_before_vault(bench: Bench) -> None:
    issue = issue_flow(bench)
    await issue.issue("api-0", "one", ROLE.name, "r1")
    await issue.issue("api-0", "two", ROLE.name, "r2")
    with pytest.raises(LimitExceeded, match="per-pod limit"):
        await issue.issue("api-0", "three", ROLE.name, "r3")
    assert len(bench.backends.database.alive) == 2


async def test_issue_past_the_clusters_cap_is_refused_and_a_replay_still_served(
    bench: Bench,
) -> None:
    """The caps are counted in the transaction that would write the pending row; a pod that
    already holds its lease gets it again whatever the count."""
    issue = issue_flow(bench, limits=IssueLimits(per_pod=2, per_cluster=1))
    first = await issue.issue("api-0", "orders-db", ROLE.name, "r1")
    with pytest.raises(LimitExceeded, match="per-cluster limit"):
        await issue.issue("api-1", "orders-db", ROLE.name, "r2")
    again = await issue.issue("api-0", "orders-db", ROLE.name, "r3")
    assert (again.replayed, again.lease.id) == (True, first.lease.id)
    assert len(bench.backends.database.alive) == 1
    assert bench.store.leases.count_live() == 1


async def test_issue_retires_a_lease_past_its_end_and_issues_anew(bench: Bench) -> None:
    issue = issue_flow(bench)
    first = await issue.issue("api-0", "orders-db", ROLE.name, "r1")
    bench.clock.now = START + timedelta(hours=1)  # the fake's leases end after 5 minutes
    fresh = await issue.issue("api-0", "orders-db", ROLE.name, "r2")
    assert not fresh.replayed
    assert fresh.lease.id != first.lease.id
    assert bench.state(first.lease.id) is LeaseState.REVOKED
    assert [r["reason"] for r in bench.records("lease.revoking")] == ["EXPIRED"]


# -- Release -------------------------------------------------------------------------------


async def test_release_revokes_at_vault_and_records_it_once(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    released = await release_flow(bench).release("api-0", lease.id, "r2")
    assert released.state is LeaseState.REVOKED
    assert bench.backends.database.alive == set()
    assert [(r["action"], r["reason"]) for r in bench.records() if r["request_id"] == "r2"] == [
        ("release", None),
        ("lease.revoking", "RELEASED"),
        ("lease.revoked", "REVOKED"),
    ]
    again = await release_flow(bench).release("api-0", lease.id, "r3")
    assert again.state is LeaseState.REVOKED
    assert len(bench.records("lease.revoked")) == 1


async def test_release_of_a_kv_lease_ends_it_in_one_store_write_with_both_records(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing at Vault holds a KV value: the row goes revoking and revoked in one
    transaction, and the trail reads as for any other lease."""
    kv = ROLES["kv"]
    begun = await bench.engine.begin(
        LeaseRequest(
            cluster=API.cluster,
            namespace=API.namespace,
            service_account=API.service_account,
            pod_name=API.pod,
            pod_uid=API.pod_uid,
            credential="config",
            role=kv.name,
        )
    )
    assert isinstance(begun, PendingLease)
    lease = (await bench.engine.issue(IssueOrder(begun.lease, kv, WHO, "r1"))).lease

    def not_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("a KV lease's end is one write, not mark_revoking then settle")

    monkeypatch.setattr(bench.store.leases, "mark_revoking", not_called)
    monkeypatch.setattr(bench.store.leases, "settle_revoked", not_called)
    released = await release_flow(bench).release("api-0", lease.id, "r2")
    assert released.state is LeaseState.REVOKED
    assert [(r["action"], r["reason"]) for r in bench.records() if r["request_id"] == "r2"] == [
        ("release", None),
        ("lease.revoking", "RELEASED"),
        ("lease.revoked", "REVOKED"),
    ]
    again = await release_flow(bench).release("api-0", lease.id, "r3")
    assert again.state is LeaseState.REVOKED
    assert len(bench.records("lease.revoked")) == 1


async def test_release_when_vault_refuses_queues_it_for_the_revoker(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    bench.backends.database.fail_revoke = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await release_flow(bench).release("api-0", lease.id, "r2")
    assert bench.state(lease.id) is LeaseState.REVOKING  # no longer handed out
    bench.backends.database.fail_revoke = None
    bench.clock.now += timedelta(hours=1)
    assert await bench.revoker.revoke_due() == 1
    assert bench.state(lease.id) is LeaseState.REVOKED


async def test_release_of_another_pods_lease_is_not_found_and_audited(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    with pytest.raises(LeaseNotFound):
        await release_flow(bench).release("api-1", lease.id, "r2")
    assert bench.state(lease.id) is LeaseState.ACTIVE
    [denied] = [r for r in bench.records("release") if r["request_id"] == "r2"]
    assert (denied["decision"], denied["pod"]) == ("deny", "api-1")


# -- RotateLeases --------------------------------------------------------------------------


def rotation_flow(bench: Bench) -> RotationFlow:
    return RotationFlow(
        bench.core,
        catalog=RoleCatalog(bench.core.store.roles),
        hub=bench.hub,
        grace=timedelta(minutes=1),
        concurrency=2,
        resume_after=timedelta(minutes=1),
    )


async def test_an_operator_rotates_a_lease_and_the_pod_hears_of_it(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    with bench.hub.subscribe(API.pod_key) as stream:
        [rotated] = await rotation_flow(bench).rotate(SECURITY, [lease.id], None, "r2")
        event = stream.queue.get_nowait()
    assert (rotated.previous_lease_id, rotated.lease.generation) == (lease.id, 2)
    assert isinstance(event, LeaseRotated)
    assert event.lease.id == rotated.lease.id
    assert bench.state(lease.id) is LeaseState.REVOKING
    assert rotated.revoke_after == START + timedelta(minutes=1)


async def test_a_rotation_cedar_refuses_changes_nothing(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    with pytest.raises(PermissionDenied):
        await rotation_flow(bench).rotate(DEVELOPER, [lease.id], None, "r2")
    assert bench.state(lease.id) is LeaseState.ACTIVE
    assert len(bench.backends.database.alive) == 1


async def test_a_rotation_vault_refuses_keeps_the_old_generation(bench: Bench) -> None:
    lease = (await issue_flow(bench).issue("api-0", "orders-db", ROLE.name, "r1")).lease
    bench.backends.database.fail_issue = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await rotation_flow(bench).rotate(SECURITY, [lease.id], None, "r2")
    assert bench.state(lease.id) is LeaseState.ACTIVE
    [failed] = bench.records("lease.failed")
    assert bench.state(failed["lease_id"]) is LeaseState.FAILED


# -- a grant's credential ------------------------------------------------------------------


def access_flow(bench: Bench) -> AccessFlow:
    return AccessFlow(
        bench.core,
        catalog=RoleCatalog(bench.core.store.roles),
        backends=cast("Backends", bench.backends),
        settings=AccessSettings(),
    )


def approved_grant(bench: Bench, requester: str = DEVELOPER.name) -> str:
    ask = check_grant_ask(ROLE.name, timedelta(minutes=30), "INC-1", timedelta(hours=8))
    grant = bench.store.grants.add(new_grant(ask, requester, bench.clock(), timedelta(hours=1)))
    return bench.store.grants.approve(grant.id, SECURITY.name, bench.clock()).id


async def test_only_the_requester_gets_a_grants_credential(bench: Bench) -> None:
    grant_id = approved_grant(bench)
    with pytest.raises(PermissionDenied):
        await access_flow(bench).issue(SECURITY, grant_id, "r")
    assert bench.backends.database.alive == set()
    assert [r["reason"] for r in bench.records("access.issue")] == ["NOT_REQUESTER"]


async def test_a_grant_ended_while_vault_answered_hands_nothing_out(bench: Bench) -> None:
    grant_id = approved_grant(bench)
    bench.backends.database.during_issue = owner_goes_away(bench, "access")
    with pytest.raises(FailedPrecondition):
        await access_flow(bench).issue(DEVELOPER, grant_id, "r")
    assert bench.backends.database.alive == set()  # revoked at once
    assert bench.records("access.issue") == []  # the grant's issue is not recorded
