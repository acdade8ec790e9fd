"""Just-in-time grants as pure logic: the state machine's moves and the request's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.clusters.config import NAME, ClusterConfig
from broker.errors import InvalidRequest
from broker.policy import Action, GrantResource, Operator, PolicyEngine, RoleResource
from broker.service.common.grant_terms import (
    ACCESS_OWNER,
    check_grant_ask,
    grant_lease_request,
    new_grant,
)
from broker.settings import AccessSettings
from broker.store.records import (
    FINAL_GRANT_STATES,
    GRANT_TRANSITIONS,
    OPEN_GRANT_STATES,
    GrantState,
    grant_may_become,
)

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "policies.cedar"
MAX = timedelta(hours=4)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


# --- the state machine ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (GrantState.PENDING, GrantState.APPROVED),
        (GrantState.PENDING, GrantState.DENIED),
        (GrantState.PENDING, GrantState.EXPIRED),
        (GrantState.PENDING, GrantState.REVOKED),
        (GrantState.APPROVED, GrantState.ISSUED),
        (GrantState.APPROVED, GrantState.EXPIRED),
        (GrantState.APPROVED, GrantState.REVOKED),
        (GrantState.ISSUED, GrantState.EXPIRED),
        (GrantState.ISSUED, GrantState.REVOKED),
    ],
)
def test_the_moves_a_grant_may_make(current: GrantState, target: GrantState) -> None:
    assert grant_may_become(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (GrantState.PENDING, GrantState.ISSUED),  # never issued without an approval
        (GrantState.APPROVED, GrantState.PENDING),
        (GrantState.APPROVED, GrantState.DENIED),  # decided once
        (GrantState.ISSUED, GrantState.APPROVED),
        (GrantState.DENIED, GrantState.APPROVED),
        (GrantState.EXPIRED, GrantState.ISSUED),
        (GrantState.REVOKED, GrantState.APPROVED),
    ],
)
def test_the_moves_a_grant_may_not_make(current: GrantState, target: GrantState) -> None:
    assert not grant_may_become(current, target)


def test_final_states_lead_nowhere_and_every_open_state_can_end() -> None:
    assert set(GRANT_TRANSITIONS) == set(GrantState)
    assert set(GrantState) == FINAL_GRANT_STATES | OPEN_GRANT_STATES
    for state in FINAL_GRANT_STATES:
        assert state.final
        assert GRANT_TRANSITIONS[state] == frozenset()
    for state in OPEN_GRANT_STATES:
        assert not state.final
        assert {GrantState.EXPIRED, GrantState.REVOKED} <= GRANT_TRANSITIONS[state]


# --- the request ------------------------------------------------------------------------------


def test_a_valid_request_is_accepted_with_its_reason_trimmed() -> None:
    ask = check_grant_ask("orders-db-ro", timedelta(minutes=30), "  INC-1: lag  ", MAX)
    assert (ask.role, ask.duration, ask.reason) == (
        "orders-db-ro",
        timedelta(minutes=30),
        "INC-1: lag",
    )


@pytest.mark.parametrize(
    ("role", "duration", "reason", "field", "hint"),
    [
        ("", timedelta(minutes=5), "why", "role", "keyferry roles list"),
        ("r", None, "why", "duration", "like 30m"),
        ("r", timedelta(seconds=30), "why", "duration", "between 60s and 14400s"),
        ("r", timedelta(hours=5), "why", "duration", "access.max_duration"),
        ("r", timedelta(minutes=5), "   ", "reason", "say why"),
        ("r", timedelta(minutes=5), "x" * 1001, "reason", "keep it to 1000"),
        ("r", timedelta(minutes=5), "two\nlines", "reason", "control characters"),
    ],
)
def test_an_invalid_request_names_the_field_and_the_fix(
    role: str, duration: timedelta | None, reason: str, field: str, hint: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_grant_ask(role, duration, reason, MAX)
    assert refused.value.field == field
    assert hint in refused.value.message


def test_a_new_grant_is_pending_until_the_approval_wait_and_its_lease_is_owned_by_it() -> None:
    ask = check_grant_ask("orders-db-ro", timedelta(minutes=30), "INC-1", MAX)
    grant = new_grant(ask, "alice", NOW, timedelta(hours=1))
    assert grant.state == GrantState.PENDING
    assert grant.expires_at == NOW + timedelta(hours=1)
    assert grant.duration_seconds == 1800
    lease = grant_lease_request(grant)
    assert (lease.cluster, lease.pod_name, lease.pod_uid) == (
        ACCESS_OWNER,
        grant.id,
        f"grant:{grant.id}",
    )
    assert lease.service_account == "alice"


# --- the example policy -----------------------------------------------------------------------


def test_the_example_policy_forbids_self_approval_even_to_an_approver() -> None:
    engine = PolicyEngine.from_files([EXAMPLE])
    role = RoleResource(name="orders-db-ro", backend="database")
    grant = GrantResource(grant_id="g", requester="alice", duration_seconds=60, role=role)
    alice = Operator(name="alice", groups=("developers", "security"))
    bob = Operator(name="bob", groups=("security",))
    own = engine.decide(alice, Action.APPROVE_ACCESS, grant)
    assert not own.allowed
    assert own.policy_ids == ("no-self-approval",)
    assert engine.decide(bob, Action.APPROVE_ACCESS, grant).allowed
    assert engine.decide(alice, Action.REVOKE_ACCESS, grant).allowed  # her own grant
    four_hours, longer = {"duration_seconds": 14400}, {"duration_seconds": 14401}
    assert engine.decide(alice, Action.REQUEST_ACCESS, role, four_hours).allowed
    assert not engine.decide(alice, Action.REQUEST_ACCESS, role, longer).allowed


def test_no_cluster_can_be_named_like_the_owner_of_grant_leases() -> None:
    """Pod watches, sweeps and cluster selectors match leases by cluster name, so a grant's
    lease is never taken for a pod's as long as no cluster can be called ACCESS_OWNER."""
    assert not NAME.match(ACCESS_OWNER)
    with pytest.raises(ValidationError):
        ClusterConfig(name=ACCESS_OWNER, kubeconfig=Path("kc"), issuer="https://issuer")


def test_the_longest_grant_setting_must_allow_the_shortest_grant() -> None:
    assert AccessSettings.model_validate({"max_duration": "4h"}).max_duration == timedelta(hours=4)
    with pytest.raises(ValidationError) as short:
        AccessSettings.model_validate({"max_duration": "30s"})
    assert "must be at least 1m" in str(short.value)
