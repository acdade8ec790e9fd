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
    GrantNotFound,
    GrantRecord,
    GrantState,
    GrantStateConflict,
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
