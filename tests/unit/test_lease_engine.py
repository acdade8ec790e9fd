"""The lease engine on an in-memory SQLite store with a fake backend (lease_bench.py):
issue, replay, end (Release's path), rotation, a grant's issue, and every undo path of the
invariant (pending row → Vault → complete → undo on failure).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import cast

import pytest

from broker.backends import Backends
from broker.errors import StoreUnavailable, VaultUnavailable
from broker.models import (
    IssueContext,
)
from broker.policy import Operator
from broker.service.admin.access_grants import AccessFlow
from broker.service.admin.rotation import RotationFlow
from broker.service.common.grant_terms import check_grant_ask, new_grant
from broker.service.common.role_catalog import RoleCatalog
from broker.service.engine.lease_engine import IssueOrder, LeaseEngine, PendingWait
from broker.service.engine.revoker import DEFAULT_CLAIM
from broker.settings import AccessSettings
from broker.store import (
    LEASE_TRANSITIONS,
    AsyncStore,
    IssueInProgress,
    LeaseState,
    LeaseStateConflict,
    PendingLease,
    Store,
)
from tests.unit.lease_bench import (
    ROLES,
    START,
    WHO,
    Bench,
    Clock,
    FailingOnce,
    begun,
    issued,
    request,
)

# -- issue, replay -------------------------------------------------------------------------


async def test_issue_writes_the_row_first_then_completes_it(bench: Bench) -> None:
    pending = await begun(bench)
    assert pending.state is LeaseState.PENDING
    tracked = await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r1"))
    assert tracked.lease.state is LeaseState.ACTIVE
    assert tracked.lease.vault_lease_id in bench.backends.database.alive
    assert [r["lease_id"] for r in bench.records("lease.active")] == [pending.id]
    assert bench.records("lease.active")[0]["fingerprints"]


async def test_a_second_call_replays_the_sealed_credential_without_vault(bench: Bench) -> None:
    first = await bench.engine.issue(IssueOrder(await begun(bench), ROLES["database"], WHO, "r1"))
    again = await bench.engine.begin(request())
    assert not isinstance(again, PendingLease)
    replayed = await bench.engine.replay(again.lease, WHO, "r2")
    assert replayed.replayed
    assert replayed.credential.reveal() == first.credential.reveal()
    assert len(bench.backends.database.alive) == 1
    assert [r["request_id"] for r in bench.records("lease.replayed")] == ["r2"]


async def test_replay_waits_for_a_pending_row_on_the_injected_clock(
    bench: Bench, store: Store, clock: Clock
) -> None:
    pending = await begun(bench)
    ticks: list[float] = []
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        ticks.append(seconds)

    wait = PendingWait(poll=1.0, limit=3.0, monotonic=lambda: now[0], sleep=sleep)
    engine = LeaseEngine(
        store=AsyncStore(store, bench.runner),
        backends=cast("Backends", bench.backends),
        sealer=bench.sealer,
        audit=bench.audit,
        revoker=bench.revoker,
        clock=clock,
        wait=wait,
    )
    with pytest.raises(IssueInProgress):
        await engine.replay(pending, WHO, "r")
    assert ticks == [1.0, 1.0, 1.0]  # three looks, then it gives up: no wall-clock wait


# -- undo paths ----------------------------------------------------------------------------


async def test_vault_refuses_the_row_fails_and_nothing_lives(bench: Bench) -> None:
    bench.backends.database.fail_issue = VaultUnavailable("Vault is sealed")
    pending = await begun(bench)
    with pytest.raises(VaultUnavailable):
        await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    assert bench.state(pending.id) is LeaseState.FAILED
    assert bench.backends.database.alive == set()
    assert [r["reason"] for r in bench.records("lease.failed")] == ["VAULT_UNAVAILABLE"]


async def test_a_store_failure_after_vault_revokes_then_fails_the_row(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issue", FailingOnce(leases.complete_issue, StoreUnavailable("gone"))
    )
    pending = await begun(bench)
    with pytest.raises(StoreUnavailable):
        await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    assert bench.backends.database.alive == set()
    assert len(bench.backends.database.revoked) == 1
    assert bench.state(pending.id) is LeaseState.FAILED
    assert [r["lease_id"] for r in bench.records("lease.failed")] == [pending.id]


async def test_when_vault_does_not_revoke_either_the_row_stays_for_reconcile(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issue", FailingOnce(leases.complete_issue, StoreUnavailable("gone"))
    )
    bench.backends.database.fail_revoke = VaultUnavailable("Vault went away")
    pending = await begun(bench)
    with pytest.raises(StoreUnavailable):
        await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    # failed would say nothing lives at Vault; something does, so reconcile settles it
    assert bench.state(pending.id) is LeaseState.PENDING
    assert len(bench.backends.database.alive) == 1
    assert bench.records("lease.failed") == []


async def test_a_row_the_store_cannot_fail_either_is_left_pending_not_raised(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issue", FailingOnce(leases.complete_issue, StoreUnavailable("gone"))
    )
    monkeypatch.setattr(
        leases, "mark_failed", FailingOnce(leases.mark_failed, StoreUnavailable("still gone"))
    )
    pending = await begun(bench)
    with pytest.raises(StoreUnavailable) as raised:
        await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    assert "gone" in raised.value.message  # the first failure, not the guarded one
    assert bench.backends.database.alive == set()
    assert bench.state(pending.id) is LeaseState.PENDING


async def test_a_kv_read_has_nothing_at_vault_to_undo(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = bench.store.leases
    monkeypatch.setattr(
        leases, "complete_issue", FailingOnce(leases.complete_issue, StoreUnavailable("gone"))
    )
    bench.backends.kv.fail_revoke = VaultUnavailable("must not be asked")
    pending = await begun(bench, ROLES["kv"])
    with pytest.raises(StoreUnavailable):
        await bench.engine.issue(IssueOrder(pending, ROLES["kv"], WHO, "r"))
    assert bench.backends.kv.revoked == []
    assert bench.state(pending.id) is LeaseState.FAILED


async def test_a_row_revoked_while_vault_answered_is_revoked_at_once(bench: Bench) -> None:
    pending = await begun(bench)

    def pod_goes_away(context: IssueContext) -> None:
        bench.store.leases.mark_revoking(pending.id)

    bench.backends.database.during_issue = pod_goes_away
    with pytest.raises(LeaseStateConflict):
        await bench.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    row = bench.store.leases.get(pending.id)
    assert row.state is LeaseState.REVOKING
    assert row.vault_lease_id is not None  # recorded for the Revoker
    assert bench.backends.database.alive == set()  # and revoked now, not handed out
    assert await bench.revoker.revoke_due() == 1
    assert bench.state(pending.id) is LeaseState.REVOKED


# -- end -----------------------------------------------------------------------------------


async def test_end_marks_audits_revokes_and_settles_once(bench: Bench) -> None:
    lease = await issued(bench)
    ended = await bench.engine.end(lease, WHO, "RELEASED", "r-end")
    assert ended.state is LeaseState.REVOKED
    assert bench.backends.database.alive == set()
    again = await bench.engine.end(lease, WHO, "RELEASED", "r-again")
    assert again.state is LeaseState.REVOKED
    assert [(r["action"], r["reason"]) for r in bench.records() if r["lease_id"] == lease.id][
        1:
    ] == [("lease.revoking", "RELEASED"), ("lease.revoked", "REVOKED")]


async def test_an_ack_brings_a_retiring_lease_revocation_forward(bench: Bench) -> None:
    old = await issued(bench)
    successor = await bench.engine.begin_next_generation(old.id)
    assert isinstance(successor, PendingLease)
    order = IssueOrder(
        successor.lease, ROLES["database"], WHO, "r-rot", retire_after=START + timedelta(hours=1)
    )
    await bench.engine.issue(order)
    assert bench.state(old.id) is LeaseState.REVOKING
    assert await bench.revoker.revoke_due() == 0  # its grace is not over
    done = await bench.engine.revoke_now(old, WHO, "r-ack")
    assert done.state is LeaseState.REVOKED
    assert [r["reason"] for r in bench.records("lease.revoked")] == ["ROTATED"]
    assert (await bench.engine.revoke_now(old, WHO, "r-ack")).state is LeaseState.REVOKED


async def test_the_periodic_pass_leaves_a_revocation_in_flight_to_its_call(bench: Bench) -> None:
    lease = await issued(bench)
    bench.backends.database.revoke_gate = gate = asyncio.Event()
    call = asyncio.create_task(bench.engine.end(lease, WHO, "RELEASED", "r-call"))
    await asyncio.sleep(0.05)  # the call is at Vault now
    assert bench.state(lease.id) is LeaseState.REVOKING
    # A pass that took the row would wait at Vault with the call: it must not even try.
    assert await asyncio.wait_for(bench.revoker.revoke_due(), timeout=5) == 0
    gate.set()
    assert (await call).state is LeaseState.REVOKED
    assert [r["request_id"] for r in bench.records("lease.revoked")] == ["r-call"]


async def test_a_revocation_whose_call_died_is_the_periodic_passs_after_the_claim(
    bench: Bench,
) -> None:
    lease = await issued(bench)
    bench.backends.database.revoke_gate = asyncio.Event()
    call = asyncio.create_task(bench.engine.end(lease, WHO, "RELEASED", "r-call"))
    await asyncio.sleep(0.05)
    call.cancel()  # the broker stopped mid-call
    bench.backends.database.revoke_gate = None
    assert await bench.revoker.revoke_due() == 0
    bench.clock.now += DEFAULT_CLAIM
    assert await bench.revoker.revoke_due() == 1
    assert bench.state(lease.id) is LeaseState.REVOKED


async def test_end_when_vault_refuses_queues_the_lease_and_raises(bench: Bench) -> None:
    lease = await issued(bench)
    bench.backends.database.fail_revoke = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await bench.engine.end(lease, WHO, "RELEASED", "r")
    row = bench.store.leases.get(lease.id)
    assert (row.state, row.revoke_attempts) == (LeaseState.REVOKING, 1)
    assert [r["reason"] for r in bench.records("lease.revoke_failed")] == ["VAULT_UNAVAILABLE"]
    bench.backends.database.fail_revoke = None
    bench.clock.now += timedelta(hours=1)
    assert await bench.revoker.revoke_due() == 1
    assert len(bench.records("lease.revoked")) == 1


async def test_end_of_a_pending_lease_leaves_it_to_the_revoker(bench: Bench) -> None:
    pending = await begun(bench)
    ended = await bench.engine.end(pending, WHO, "RELEASED", "r")
    assert ended.state is LeaseState.REVOKING
    assert bench.records("lease.revoked") == []


async def test_reconcile_and_the_revoker_record_one_revocation(bench: Bench) -> None:
    lease = await issued(bench)
    await bench.engine.end(lease, WHO, "RELEASED", "r")
    assert not await bench.engine.close_gone(lease.id, WHO, "reconcile")
    assert len(bench.records("lease.revoked")) == 1


# -- rotation and grants -------------------------------------------------------------------


async def test_rotation_issues_the_next_generation_and_retires_the_old(
    bench: Bench, store: Store, clock: Clock
) -> None:
    catalog = RoleCatalog(bench.core.store.roles)
    await catalog.apply([ROLES["database"]])
    rotation = RotationFlow(
        bench.core,
        catalog=catalog,
        hub=bench.hub,
        grace=timedelta(minutes=1),
        concurrency=2,
        resume_after=timedelta(minutes=1),
    )
    lease = await issued(bench)
    rotated = await rotation.reissue(lease, timedelta(seconds=30), "r-rot")
    assert rotated.lease.generation == 2
    assert rotated.lease.state is LeaseState.ACTIVE
    assert bench.state(lease.id) is LeaseState.REVOKING
    assert rotated.revoke_after == START + timedelta(seconds=30)
    assert [r["action"] for r in bench.records() if r["request_id"] == "r-rot"] == [
        "lease.active",
        "lease.revoking",
    ]
    bench.backends.database.fail_issue = VaultUnavailable("Vault is sealed")
    with pytest.raises(VaultUnavailable):
        await rotation.reissue(rotated.lease, timedelta(seconds=30), "r-fail")
    assert bench.state(rotated.lease.id) is LeaseState.ACTIVE  # the old one stays
    [failed] = bench.records("lease.failed")
    assert bench.state(failed["lease_id"]) is LeaseState.FAILED


async def test_a_grant_issues_a_tracked_lease_and_undoes_it_when_renewal_fails(
    bench: Bench, store: Store, clock: Clock
) -> None:
    role = ROLES["database"]
    catalog = RoleCatalog(bench.core.store.roles)
    await catalog.apply([role])
    access = AccessFlow(
        bench.core,
        catalog=catalog,
        backends=cast("Backends", bench.backends),
        settings=AccessSettings(),
    )
    alice = Operator(name="alice")

    def approved() -> str:
        ask = check_grant_ask(role.name, timedelta(minutes=30), "INC-1", timedelta(hours=8))
        grant = store.grants.add(new_grant(ask, alice.name, clock(), timedelta(hours=1)))
        return store.grants.approve(grant.id, "bob", clock()).id

    failing = approved()
    bench.backends.database.fail_renew = VaultUnavailable("Vault went away")
    with pytest.raises(VaultUnavailable):
        await access.issue(alice, failing, "r-fail")
    assert bench.backends.database.alive == set()  # renewed down failed: revoked, not handed
    [failed] = bench.records("lease.failed")
    assert bench.state(failed["lease_id"]) is LeaseState.FAILED

    bench.backends.database.fail_renew = None
    grant_id = approved()
    handed = await access.issue(alice, grant_id, "r-ok")
    assert handed.lease.state is LeaseState.ACTIVE
    assert handed.grant.lease_id == handed.lease.id
    again = await access.issue(alice, grant_id, "r-again")
    assert again.credential.reveal() == handed.credential.reveal()
    ended = await access.revoke(alice, grant_id, "r-revoke")
    assert ended.pending_lease_ids == []
    assert bench.state(handed.lease.id) is LeaseState.REVOKED
    assert [r["reason"] for r in bench.records("lease.revoking")] == ["GRANT_REVOKED"]


# -- the state table -----------------------------------------------------------------------


def test_every_state_has_its_moves_and_final_states_have_none() -> None:
    assert set(LEASE_TRANSITIONS) == set(LeaseState)
    assert LEASE_TRANSITIONS[LeaseState.REVOKED] == frozenset()
    assert LEASE_TRANSITIONS[LeaseState.FAILED] == frozenset()


async def test_the_store_refuses_a_move_the_table_does_not_allow(bench: Bench) -> None:
    lease = await issued(bench)
    with pytest.raises(LeaseStateConflict) as refused:
        bench.store.leases.mark_failed(lease.id, "too late")
    assert refused.value.allowed == frozenset({LeaseState.PENDING})
    bench.store.leases.mark_revoking(lease.id)
    bench.store.leases.mark_revoked(lease.id)
    assert bench.store.leases.mark_revoking(lease.id).state is LeaseState.REVOKED  # quiet
    pending = await begun(bench)
    bench.store.leases.mark_failed(pending.id, "Vault refused")
    with pytest.raises(LeaseStateConflict):
        bench.store.leases.settle_revoked(pending.id)
    with pytest.raises(LeaseStateConflict):
        bench.store.leases.complete_issue(pending.id, "x", None)


async def test_concurrent_issues_of_one_credential_ask_vault_once(bench: Bench) -> None:
    async def one() -> bool:
        result = await bench.engine.begin(request())
        if isinstance(result, PendingLease):
            await bench.engine.issue(IssueOrder(result.lease, ROLES["database"], WHO, "r"))
            return True
        return False

    began = await asyncio.gather(*(one() for _ in range(4)))
    assert sum(began) == 1
    assert len(bench.backends.database.alive) == 1
