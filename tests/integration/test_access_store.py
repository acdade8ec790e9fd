"""The access grants' table on SQLite and PostgreSQL: each step one locked transaction, moves
the state machine does not allow refused with the grant as it is, repeated ends harmless."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from pydantic import SecretStr

from broker.errors import FailedPrecondition
from broker.service.common.grant_terms import check_grant_ask, new_grant
from broker.store import (
    EndPath,
    GrantNotFound,
    GrantRecord,
    GrantState,
    GrantStateConflict,
    KubeGrantRecord,
    KubeObjects,
    Store,
    StoreSettings,
)
from tests.scene.stores import START, postgres_database, sqlite_url

pytestmark = pytest.mark.bed
WAIT = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path_factory.mktemp("store"))
        the_store = Store.open(StoreSettings(url=SecretStr(url), pool_size=4))
        yield the_store
        the_store.close()
    else:
        with postgres_database(request.getfixturevalue("postgres")) as url:
            the_store = Store.open(StoreSettings(url=SecretStr(url), pool_size=4))
            yield the_store
            the_store.close()


def requested(store: Store, requester: str = "alice", minutes: int = 30) -> GrantRecord:
    ask = check_grant_ask("orders-db-ro", timedelta(minutes=minutes), "INC-1", timedelta(hours=4))
    return store.grants.add(new_grant(ask, requester, START, WAIT))


def test_a_grant_goes_from_request_to_expiry(store: Store) -> None:
    grant = requested(store)
    assert store.grants.get(grant.id) == grant
    approved = store.grants.approve(grant.id, "bob", START + timedelta(minutes=5))
    assert approved.state == GrantState.APPROVED
    assert approved.decided_by == "bob"
    assert approved.expires_at == START + timedelta(minutes=35)  # its duration from approval
    issued = store.grants.record_lease(grant.id, "lease-1", START + timedelta(minutes=6))
    assert (issued.state, issued.lease_id) == (GrantState.ISSUED, "lease-1")
    newer = store.grants.record_lease(grant.id, "lease-2", START + timedelta(minutes=7))
    assert newer.lease_id == "lease-2"

    assert store.grants.due(START + timedelta(minutes=34)) == []
    assert [g.id for g in store.grants.due(START + timedelta(minutes=35))] == [grant.id]
    ended_at = START + timedelta(minutes=36)
    expired = store.grants.end(grant.id, GrantState.EXPIRED, "broker.access-expiry", ended_at)
    assert (expired.state, expired.ended_by, expired.ended_at) == (
        GrantState.EXPIRED,
        "broker.access-expiry",
        ended_at,
    )
    again = store.grants.end(grant.id, GrantState.EXPIRED, "broker.access-expiry", START)
    assert again == expired  # the job ran twice (a restart): nothing changes
    assert store.grants.due(START + timedelta(days=1)) == []


def test_moves_the_state_machine_does_not_allow_are_refused(store: Store) -> None:
    grant = requested(store)
    with pytest.raises(GrantStateConflict) as unapproved:
        store.grants.record_lease(grant.id, "lease-1", START)
    assert unapproved.value.grant.state == GrantState.PENDING
    assert isinstance(unapproved.value, FailedPrecondition)
    store.grants.deny(grant.id, "bob", START)
    steps: list[Callable[[], GrantRecord]] = [
        lambda: store.grants.approve(grant.id, "carol", START),
        lambda: store.grants.record_lease(grant.id, "lease-1", START),
        lambda: store.grants.end(grant.id, GrantState.REVOKED, "bob", START),
    ]
    for step in steps:
        with pytest.raises(GrantStateConflict) as denied:
            step()
        assert denied.value.grant.state == GrantState.DENIED
        assert "request a new grant" in denied.value.message
    with pytest.raises(GrantNotFound):
        store.grants.get("no-such-grant")


def test_two_approvers_racing_for_one_grant_cannot_both_win(store: Store) -> None:
    grant = requested(store)

    def decide(approver: str) -> str:
        step = store.grants.approve if approver == "bob" else store.grants.deny
        try:
            return step(grant.id, approver, START).state.value
        except GrantStateConflict:
            return "lost"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(decide, ["bob", "dave"]))
    assert outcomes.count("lost") == 1
    final = store.grants.get(grant.id)
    assert final.state.value in outcomes


def test_find_filters_by_requester_and_state_newest_first(store: Store) -> None:
    first = requested(store, "alice")
    second = store.grants.add(
        new_grant(
            check_grant_ask("orders-db-ro", timedelta(minutes=5), "INC-2", timedelta(hours=4)),
            "carol",
            START + timedelta(seconds=1),
            WAIT,
        )
    )
    assert [g.id for g in store.grants.find()] == [second.id, first.id]
    assert [g.id for g in store.grants.find(requester="alice")] == [first.id]
    store.grants.approve(first.id, "bob", START)
    approved = store.grants.find(states=frozenset({GrantState.APPROVED}))
    assert [g.id for g in approved] == [first.id]


# --- cluster grants (kube_grants) ----------------------------------------------------------


def cluster_grant(store: Store, grant_id: str = "g-1") -> KubeGrantRecord:
    return store.kube_grants.add(
        KubeGrantRecord(
            grant_id=grant_id,
            cluster="a",
            namespace="orders",
            cluster_role="edit",
            account_namespace="keyferry-access",
            account=f"keyferry-grant-{grant_id}",
            objects=KubeObjects.ABSENT,
            account_uid=None,
            binding_uid=None,
            token_expires_at=None,
            next_attempt_at=None,
            attempts=0,
            last_error=None,
            ended_path=None,
            removed_at=None,
            updated_at=START,
        )
    )


def test_a_cluster_grants_objects_are_made_once_and_removed_once(store: Store) -> None:
    made = cluster_grant(store)
    claimed = store.kube_grants.begin_create(made.grant_id, START + timedelta(minutes=1), START)
    assert claimed is not None
    assert claimed.objects == KubeObjects.CREATING
    # A second issue while the first makes the objects gets nothing to do.
    assert store.kube_grants.begin_create(made.grant_id, START, START) is None
    store.kube_grants.record_uids(made.grant_id, START, account_uid="u-sa")
    store.kube_grants.record_uids(made.grant_id, START, binding_uid="u-rb")
    present = store.kube_grants.created(made.grant_id, START + timedelta(minutes=30), START)
    assert (present.objects, present.account_uid, present.binding_uid) == (
        KubeObjects.PRESENT,
        "u-sa",
        "u-rb",
    )
    assert store.kube_grants.due(START + timedelta(hours=1)) == []  # present: nothing due

    removing = store.kube_grants.to_remove(made.grant_id, START + timedelta(minutes=5))
    assert removing.objects == KubeObjects.REMOVING
    assert store.kube_grants.pending_removals() == 1
    later = START + timedelta(minutes=6)
    failed = store.kube_grants.removal_failed(made.grant_id, "unreachable", later, START)
    assert (failed.attempts, failed.last_error) == (1, "unreachable")
    assert store.kube_grants.due(START + timedelta(minutes=5)) == []  # waits for its retry
    assert [d.grant_id for d in store.kube_grants.due(later)] == [made.grant_id]
    done = store.kube_grants.removed(made.grant_id, EndPath.ACCOUNT_DELETED, later, reopen=False)
    assert (done.objects, done.ended_path, done.account_uid) == (
        KubeObjects.REMOVED,
        EndPath.ACCOUNT_DELETED,
        None,
    )
    assert store.kube_grants.pending_removals() == 0
    # Ending again changes nothing; `again` (an issue that made objects late) queues anew.
    assert store.kube_grants.to_remove(made.grant_id, later).objects == KubeObjects.REMOVED
    again = store.kube_grants.to_remove(made.grant_id, later, again=True)
    assert again.objects == KubeObjects.REMOVING


def test_an_issue_that_died_is_due_after_its_claim_and_may_be_made_again(store: Store) -> None:
    made = cluster_grant(store, "g-2")
    store.kube_grants.begin_create(made.grant_id, START + timedelta(minutes=1), START)
    assert store.kube_grants.due(START) == []  # the issue still holds it
    due = store.kube_grants.due(START + timedelta(minutes=2))
    assert [(d.grant_id, d.objects) for d in due] == [(made.grant_id, KubeObjects.CREATING)]
    back = store.kube_grants.removed(made.grant_id, EndPath.ACCOUNT_DELETED, START, reopen=True)
    assert (back.objects, back.ended_path) == (KubeObjects.ABSENT, None)
    assert store.kube_grants.begin_create(made.grant_id, START, START) is not None
    assert store.kube_grants.many([made.grant_id, "not-a-cluster-grant"]).keys() == {made.grant_id}
