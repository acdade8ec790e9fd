"""Cedar decisions for every action, allowed and denied, with the example policy set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.policy import (
    Action,
    BrokerResource,
    ClusterAccessResource,
    ClusterRef,
    ConnectionResource,
    GrantResource,
    LeaseResource,
    Operator,
    PolicyEngine,
    PolicyInvalid,
    RoleResource,
    Workload,
)
from broker.policy.entities import Principal, Resource

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "policies.cedar"

APP = Workload(cluster="a", namespace="orders", service_account="app", pod="app-1", pod_uid="u1")
OTHER_NS = APP.model_copy(update={"namespace": "billing"})
DEBUG = APP.model_copy(update={"pod": "debug-shell"})
SECURITY = Operator(name="sam", groups=("security",))
PLATFORM = Operator(name="pat", groups=("platform",))
NOBODY = Operator(name="eve")
DB_ROLE = RoleResource(name="orders-db-ro", backend="database")
AWS_ROLE = RoleResource(name="s3-reader", backend="aws")
OWN_LEASE = LeaseResource(
    lease_id="l1", cluster="a", namespace="orders", service_account="app", role=DB_ROLE
)
FOREIGN_LEASE = OWN_LEASE.model_copy(update={"cluster": "b"})
CLUSTER = ClusterRef(name="a")
BROKER = BrokerResource()
CONNECTION = ConnectionResource(mount="db-orders", name="orders")
CTX = {"credential_name": "db"}
DEVELOPER = Operator(name="dev", groups=("developers",))
GRANT = GrantResource(grant_id="g1", requester="dev", duration_seconds=600, role=DB_ROLE)
OWN_GRANT = GRANT.model_copy(update={"requester": "sam"})
SEC_ACCESS, OWN_GRANTS = "security-decides-access", "requesters-own-grants"
DEV_ACCESS = "developers-request-access"
ORDERS_EDIT = ClusterAccessResource(cluster="a", namespace="orders", cluster_role="edit")
BILLING_EDIT = ORDERS_EDIT.model_copy(update={"namespace": "billing"})
ADMIN_IN_ORDERS = ORDERS_EDIT.model_copy(update={"cluster_role": "admin"})
EVERYWHERE_VIEW = ClusterAccessResource(cluster="a", namespace=None, cluster_role="view")
CONTEXTS: dict[Action, dict[str, Any]] = {
    Action.ISSUE: CTX,
    Action.REQUEST_ACCESS: {"duration_seconds": 600},
    Action.REQUEST_CLUSTER_ACCESS: {"duration_seconds": 600},
    Action.REQUEST_CLUSTER_WIDE_ACCESS: {"duration_seconds": 600},
}
DEV_CLUSTER, PLATFORM_WIDE = (
    "developers-request-cluster-access",
    "platform-request-cluster-wide-view",
)

CASES: list[tuple[str, Principal, Action, Resource, bool, str | None]] = [
    ("issue-allowed", APP, Action.ISSUE, DB_ROLE, True, "orders-workloads-issue"),
    ("issue-other-namespace", OTHER_NS, Action.ISSUE, DB_ROLE, False, None),
    ("issue-wrong-backend", APP, Action.ISSUE, AWS_ROLE, False, None),
    ("issue-forbid-wins", DEBUG, Action.ISSUE, DB_ROLE, False, "no-debug-pods"),
    ("watch-own", APP, Action.WATCH, OWN_LEASE, True, "workloads-own-leases"),
    ("watch-same-issuer-other-cluster", APP, Action.WATCH, FOREIGN_LEASE, False, None),
    ("release-own", APP, Action.RELEASE, OWN_LEASE, True, "workloads-own-leases"),
    ("release-foreign", APP, Action.RELEASE, FOREIGN_LEASE, False, None),
    ("renew-own", APP, Action.RENEW, OWN_LEASE, True, "workloads-own-leases"),
    ("renew-by-debug-pod", DEBUG, Action.RENEW, OWN_LEASE, False, "no-debug-pods"),
    ("rotate-security", SECURITY, Action.ROTATE, OWN_LEASE, True, "security-operators"),
    ("rotate-platform", PLATFORM, Action.ROTATE, OWN_LEASE, False, None),
    ("revoke-security", SECURITY, Action.REVOKE, CLUSTER, True, "security-operators"),
    ("revoke-nobody", NOBODY, Action.REVOKE, CLUSTER, False, None),
    ("register-platform", PLATFORM, Action.REGISTER, CLUSTER, True, "platform-operators"),
    ("register-security", SECURITY, Action.REGISTER, CLUSTER, False, None),
    ("grant-platform", PLATFORM, Action.GRANT, DB_ROLE, True, "platform-operators"),
    ("grant-nobody", NOBODY, Action.GRANT, DB_ROLE, False, None),
    ("approve-security", SECURITY, Action.APPROVE, DB_ROLE, True, "security-operators"),
    ("approve-platform", PLATFORM, Action.APPROVE, DB_ROLE, False, None),
    ("audit-security", SECURITY, Action.AUDIT, BROKER, True, "security-operators"),
    ("audit-nobody", NOBODY, Action.AUDIT, BROKER, False, None),
    ("explain-security", SECURITY, Action.EXPLAIN, BROKER, True, "security-operators"),
    ("explain-platform", PLATFORM, Action.EXPLAIN, BROKER, False, None),
    ("manage-rbac-platform", PLATFORM, Action.MANAGE_RBAC, BROKER, True, "platform-operators"),
    ("manage-rbac-security", SECURITY, Action.MANAGE_RBAC, BROKER, False, None),
    (
        "rotate-root-security",
        SECURITY,
        Action.ROTATE_ROOT,
        CONNECTION,
        True,
        "security-rotate-root",
    ),
    ("rotate-root-platform", PLATFORM, Action.ROTATE_ROOT, CONNECTION, False, None),
    (
        "request-access-developer",
        DEVELOPER,
        Action.REQUEST_ACCESS,
        DB_ROLE,
        True,
        "developers-request-access",
    ),
    ("request-access-security", SECURITY, Action.REQUEST_ACCESS, DB_ROLE, False, None),
    ("approve-access-security", SECURITY, Action.APPROVE_ACCESS, GRANT, True, SEC_ACCESS),
    ("approve-access-own", SECURITY, Action.APPROVE_ACCESS, OWN_GRANT, False, "no-self-approval"),
    ("approve-access-platform", PLATFORM, Action.APPROVE_ACCESS, GRANT, False, None),
    ("revoke-access-requester", DEVELOPER, Action.REVOKE_ACCESS, GRANT, True, OWN_GRANTS),
    ("revoke-access-nobody", NOBODY, Action.REVOKE_ACCESS, GRANT, False, None),
    ("view-access-security", SECURITY, Action.VIEW_ACCESS, GRANT, True, SEC_ACCESS),
    ("view-access-other-developer", PLATFORM, Action.VIEW_ACCESS, GRANT, False, None),
    (
        "cluster-access-developer",
        DEVELOPER,
        Action.REQUEST_CLUSTER_ACCESS,
        ORDERS_EDIT,
        True,
        DEV_CLUSTER,
    ),
    (
        "cluster-access-other-ns",
        DEVELOPER,
        Action.REQUEST_CLUSTER_ACCESS,
        BILLING_EDIT,
        False,
        None,
    ),
    (
        "cluster-access-admin",
        DEVELOPER,
        Action.REQUEST_CLUSTER_ACCESS,
        ADMIN_IN_ORDERS,
        False,
        None,
    ),
    # A namespaced permit never gives a ClusterRoleBinding: that is its own action.
    (
        "cluster-wide-developer",
        DEVELOPER,
        Action.REQUEST_CLUSTER_WIDE_ACCESS,
        EVERYWHERE_VIEW,
        False,
        None,
    ),
    (
        "cluster-wide-platform",
        PLATFORM,
        Action.REQUEST_CLUSTER_WIDE_ACCESS,
        EVERYWHERE_VIEW,
        True,
        PLATFORM_WIDE,
    ),
]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_files([EXAMPLE])


@pytest.mark.parametrize(
    ("principal", "action", "resource", "allowed", "decided_by"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decision(
    engine: PolicyEngine,
    principal: Principal,
    action: Action,
    resource: Resource,
    allowed: bool,
    decided_by: str | None,
) -> None:
    decision = engine.decide(principal, action, resource, CONTEXTS.get(action))
    assert decision.allowed is allowed
    assert decision.errors == ()
    if decided_by is None:
        assert decision.policy_ids == ()  # default deny: no policy matched
    else:
        assert decided_by in decision.policy_ids


def test_every_action_is_covered_both_ways() -> None:
    allowed = {c[2] for c in CASES if c[4]}
    denied = {c[2] for c in CASES if not c[4]}
    assert allowed == denied == set(Action)


def test_empty_policy_set_denies_everything() -> None:
    decision = PolicyEngine("").decide(APP, Action.ISSUE, DB_ROLE, CTX)
    assert not decision.allowed


def test_a_policy_that_does_not_match_the_schema_is_refused_with_its_id() -> None:
    bad = (
        '@id("typo")\n'
        'permit (principal is Workload, action, resource) when { principal.namspace == "x" };'
    )
    with pytest.raises(PolicyInvalid, match=r"typo: .*namspace") as refused:
        PolicyEngine(bad, "bad.cedar")
    assert refused.value.source == "bad.cedar"


def test_a_policy_that_does_not_parse_is_refused() -> None:
    with pytest.raises(PolicyInvalid, match="does not parse"):
        PolicyEngine("permit (principal, action, resource) when {", "broken.cedar")


def test_from_files_names_the_bad_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.cedar", tmp_path / "bad.cedar"
    good.write_text(EXAMPLE.read_text())
    bad.write_text('permit (principal, action == Action::"fly", resource);')
    with pytest.raises(PolicyInvalid) as refused:
        PolicyEngine.from_files([good, bad])
    assert refused.value.source == str(bad)
