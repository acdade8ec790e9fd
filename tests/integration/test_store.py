"""The lease store on both databases it supports: SQLite (embedded) and the bed's PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import SecretStr
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from broker.errors import InvalidRequest, StoreUnavailable
from broker.store import (
    ExistingLease,
    LeaseNotFound,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LeaseStateConflict,
    PendingLease,
    RoleNotFound,
    Selector,
    Store,
    StoreRunner,
    StoreSettings,
    create_store_engine,
    current_revision,
    head_revision,
    upgrade,
)
from broker.store.migrate import VERSION_TABLE
from broker.store.schema import Base
from tests.bed.ports import free_port
from tests.scene.stores import TickingClock, postgres_database, sqlite_url

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path_factory.mktemp("store"))
    else:
        with postgres_database(request.getfixturevalue("postgres")) as url:
            yield url


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
def store(store_url: str, clock: TickingClock) -> Iterator[Store]:
    the_store = Store.open(StoreSettings(url=SecretStr(store_url), pool_size=4), clock)
    yield the_store
    the_store.close()


def request_for(pod_uid: str = "uid-1", credential: str = "db", **overrides: str) -> LeaseRequest:
    fields = {
        "cluster": "prod-a",
        "namespace": "orders",
        "service_account": "api",
        "pod_name": "api-7f9",
        "pod_uid": pod_uid,
        "credential": credential,
        "role": "orders-db-ro",
    }
    fields.update(overrides)
    return LeaseRequest(**fields)


def pending(store: Store, req: LeaseRequest) -> LeaseRecord:
    started = store.leases.begin_issue(req)
    assert isinstance(started, PendingLease)
    return started.lease


def active(
    store: Store, req: LeaseRequest, expires_at: datetime, vault_id: str = ""
) -> LeaseRecord:
    lease = pending(store, req)
    return store.leases.complete_issue(lease.id, vault_id or f"db/creds/ro/{lease.id}", expires_at)


# -- migrations --------------------------------------------------------------------------------


def test_migrations_run_from_empty_and_are_idempotent(store_url: str) -> None:
    engine = create_store_engine(StoreSettings(url=SecretStr(store_url)))
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"leases", "roles", "audit_checkpoints", "keyferry_schema_version"} <= tables

        upgrade(engine)
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from keyferry_schema_version")).scalar() == 1
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_once(store_url: str) -> None:
    engines = [create_store_engine(StoreSettings(url=SecretStr(store_url))) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(upgrade, engines))
        assert {current_revision(e) for e in engines} == {head_revision()}
    finally:
        for engine in engines:
            engine.dispose()


def test_migrated_schema_matches_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, Base.metadata) == []


# -- issue ---------------------------------------------------------------------------------------


def test_begin_issue_writes_a_pending_row_then_returns_it_to_every_later_call(
    store: Store,
) -> None:
    first = pending(store, request_for())
    assert first.state is LeaseState.PENDING
    assert first.generation == 1
    assert first.vault_lease_id is None
    assert first.revoke_attempts == 0

    again = store.leases.begin_issue(request_for())
    assert isinstance(again, ExistingLease)
    assert again.lease == first
    other_credential = store.leases.begin_issue(request_for(credential="cache"))
    assert isinstance(other_credential, PendingLease)


def test_concurrent_issue_for_one_pod_credential_writes_exactly_one_row(store: Store) -> None:
    callers = 20
    barrier = threading.Barrier(callers)

    def issue(_: int) -> PendingLease | ExistingLease:
        barrier.wait()
        return store.leases.begin_issue(request_for(pod_uid="uid-race"))

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(issue, range(callers)))

    winners = [r for r in results if isinstance(r, PendingLease)]
    assert len(winners) == 1
    assert {r.lease.id for r in results} == {winners[0].lease.id}
    rows = store.leases.list_by_selector(Selector(states=frozenset(LeaseState)))
    assert [r.id for r in rows] == [winners[0].lease.id]


def test_the_database_itself_refuses_a_second_live_row(store: Store) -> None:
    lease = pending(store, request_for())
    with store.engine.connect() as conn:
        row = conn.execute(text("select * from leases where id = :id"), {"id": lease.id})
        values = dict(row.mappings().one())
        values["id"] = "another-id"
        columns = ", ".join(values)
        params = ", ".join(f":{k}" for k in values)
        with pytest.raises(SQLAlchemyError):
            conn.execute(text(f"insert into leases ({columns}) values ({params})"), values)  # noqa: S608 (table names from the test)


def test_complete_issue_activates_the_lease_and_is_idempotent(
    store: Store, clock: TickingClock
) -> None:
    lease = pending(store, request_for())
    expires = clock.last + timedelta(minutes=5)

    done = store.leases.complete_issue(lease.id, "db/creds/ro/abc", expires)
    assert done.state is LeaseState.ACTIVE
    assert done.vault_lease_id == "db/creds/ro/abc"
    assert done.expires_at == expires
    assert done.updated_at > lease.updated_at
    assert store.leases.complete_issue(lease.id, "db/creds/ro/abc", expires) == done
    assert store.leases.get(lease.id) == done

    with pytest.raises(LeaseStateConflict) as conflict:
        store.leases.complete_issue(lease.id, "db/creds/ro/other", expires)
    assert conflict.value.lease.state is LeaseState.ACTIVE
    with pytest.raises(LeaseNotFound):
        store.leases.complete_issue("no-such-lease", "x", expires)


def test_a_lease_revoked_during_issue_is_recorded_for_the_revoker(
    store: Store, clock: TickingClock
) -> None:
    lease = pending(store, request_for())
    store.leases.mark_revoking(lease.id)  # the pod was deleted while Vault was asked
    with pytest.raises(LeaseStateConflict) as conflict:
        store.leases.complete_issue(lease.id, "db/creds/ro/late", clock.last)
    assert conflict.value.lease.state is LeaseState.REVOKING
    due = store.leases.leases_to_revoke(clock())
    assert [(r.id, r.vault_lease_id) for r in due] == [(lease.id, "db/creds/ro/late")]
    with pytest.raises(LeaseStateConflict):  # the id is recorded once; no overwrite
        store.leases.complete_issue(lease.id, "db/creds/ro/other", clock.last)
    assert store.leases.get(lease.id).vault_lease_id == "db/creds/ro/late"


def test_mark_failed_ends_a_pending_lease_and_frees_the_pod_credential(store: Store) -> None:
    lease = pending(store, request_for())
    failed = store.leases.mark_failed(lease.id, "Vault: permission denied " + "x" * 5000)
    assert failed.state is LeaseState.FAILED
    assert failed.last_error is not None
    assert failed.last_error.startswith("Vault: permission denied")
    assert len(failed.last_error) <= 1000
    assert store.leases.mark_failed(lease.id, "again") == failed

    retry = pending(store, request_for())
    assert retry.id != lease.id
    assert retry.generation == 2


def test_mark_failed_refuses_an_active_lease(store: Store, clock: TickingClock) -> None:
    lease = active(store, request_for(), clock.last)
    with pytest.raises(LeaseStateConflict):
        store.leases.mark_failed(lease.id, "late failure")


def test_find_live_prefers_the_active_lease(store: Store, clock: TickingClock) -> None:
    assert store.leases.find_live("prod-a", "uid-1", "db") is None
    lease = pending(store, request_for())
    assert store.leases.find_live("prod-a", "uid-1", "db") == lease

    current = store.leases.complete_issue(lease.id, "v/1", clock.last + timedelta(hours=1))
    assert store.leases.find_live("prod-a", "uid-1", "db") == current
    rotating = store.leases.begin_rotation(lease.id)
    assert isinstance(rotating, PendingLease)
    assert (
        store.leases.find_live("prod-a", "uid-1", "db") == current
    )  # the new one is not issued yet

    store.leases.mark_revoking(current.id)
    assert store.leases.find_live("prod-a", "uid-1", "db") == rotating.lease
    store.leases.mark_failed(rotating.lease.id, "Vault down")
    assert store.leases.find_live("prod-a", "uid-1", "db") is None
    assert store.leases.find_live("prod-a", "uid-2", "db") is None


def test_a_pod_uid_is_keyed_within_its_cluster(store: Store, clock: TickingClock) -> None:
    """Another cluster's API server can mint any UID: the same UID there is another pod."""
    victim = store.leases.complete_issue(
        pending(store, request_for()).id, "v/1", clock.last + timedelta(hours=1)
    )
    assert store.leases.find_live("rogue", "uid-1", "db") is None
    other = store.leases.begin_issue(request_for(cluster="rogue"))
    assert isinstance(other, PendingLease)
    assert other.lease.id != victim.id
    assert other.lease.generation == 1
    store.leases.complete_issue(other.lease.id, "v/2", clock.last + timedelta(hours=1))
    assert store.leases.get(victim.id).state == LeaseState.ACTIVE
    assert store.leases.count_live(cluster="prod-a", pod_uid="uid-1") == 1
    assert store.leases.find_live("prod-a", "uid-1", "db") == store.leases.get(victim.id)


# -- rotation --------------------------------------------------------------------------------


def test_rotation_keeps_the_old_generation_until_the_new_is_issued(
    store: Store, clock: TickingClock
) -> None:
    old = active(store, request_for(), clock.last + timedelta(hours=1), "v/old")
    started = store.leases.begin_rotation(old.id)
    assert isinstance(started, PendingLease)
    new = started.lease
    assert new.generation == old.generation + 1
    assert (new.pod_uid, new.credential, new.role) == (old.pod_uid, old.credential, old.role)
    assert store.leases.get(old.id).state is LeaseState.ACTIVE

    twice = store.leases.begin_rotation(old.id)
    assert isinstance(twice, ExistingLease)
    assert twice.lease.id == new.id

    grace_end = clock.last + timedelta(minutes=2)
    done = store.leases.complete_issue(
        new.id, "v/new", clock.last + timedelta(hours=1), retire_after=grace_end
    )
    assert done.state is LeaseState.ACTIVE
    retired = store.leases.get(old.id)
    assert retired.state is LeaseState.REVOKING
    assert retired.revoke_after == grace_end

    assert store.leases.leases_to_revoke(grace_end - timedelta(seconds=1)) == []
    acked = store.leases.mark_revoking(old.id, revoke_after=clock.last)  # the Ack came early
    assert acked.revoke_after is not None
    assert acked.revoke_after < grace_end
    assert [r.id for r in store.leases.leases_to_revoke(clock.last)] == [old.id]


def test_only_an_active_lease_can_rotate(store: Store) -> None:
    lease = pending(store, request_for())
    with pytest.raises(LeaseStateConflict) as conflict:
        store.leases.begin_rotation(lease.id)
    assert conflict.value.allowed == frozenset({LeaseState.ACTIVE})
    with pytest.raises(LeaseNotFound):
        store.leases.begin_rotation("missing")


# -- renew and revoke -----------------------------------------------------------------------


def test_leases_to_renew_lists_active_leases_ending_soonest_first(
    store: Store, clock: TickingClock
) -> None:
    now = clock.last
    late = active(store, request_for("uid-late"), now + timedelta(hours=2))
    soon = active(store, request_for("uid-soon"), now + timedelta(minutes=5))
    sooner = active(store, request_for("uid-sooner"), now + timedelta(minutes=1))
    pending(store, request_for("uid-pending"))
    revoking = active(store, request_for("uid-revoking"), now + timedelta(minutes=1))
    store.leases.mark_revoking(revoking.id)

    due = store.leases.leases_to_renew(now + timedelta(minutes=10))
    assert [r.id for r in due] == [sooner.id, soon.id]
    assert [r.id for r in store.leases.leases_to_renew(now + timedelta(minutes=10), limit=1)] == [
        sooner.id
    ]

    renewed = store.leases.record_renewal(soon.id, now + timedelta(hours=3))
    assert renewed.expires_at == now + timedelta(hours=3)
    assert [r.id for r in store.leases.leases_to_renew(now + timedelta(minutes=10))] == [sooner.id]
    assert late.id not in {r.id for r in store.leases.leases_to_renew(now + timedelta(hours=1))}
    with pytest.raises(LeaseStateConflict):
        store.leases.record_renewal(revoking.id, now + timedelta(hours=3))


def test_revocation_is_retried_until_it_succeeds(store: Store, clock: TickingClock) -> None:
    lease = active(store, request_for(), clock.last + timedelta(hours=1))
    revoking = store.leases.mark_revoking(lease.id)
    assert revoking.state is LeaseState.REVOKING
    assert store.leases.find_live(lease.cluster, lease.pod_uid, lease.credential) is None
    assert [r.id for r in store.leases.leases_to_revoke(clock.last)] == [lease.id]

    retry_at = clock.last + timedelta(seconds=30)
    failed = store.leases.record_revoke_failure(lease.id, "Vault sealed", retry_at)
    failed = store.leases.record_revoke_failure(lease.id, "Vault sealed again", retry_at)
    assert failed.state is LeaseState.REVOKING
    assert failed.revoke_attempts == 2
    assert failed.last_error == "Vault sealed again"
    assert store.leases.leases_to_revoke(retry_at - timedelta(seconds=1)) == []
    assert [r.id for r in store.leases.leases_to_revoke(retry_at)] == [lease.id]

    revoked = store.leases.mark_revoked(lease.id)
    assert revoked.state is LeaseState.REVOKED
    assert store.leases.mark_revoked(lease.id) == revoked
    assert store.leases.mark_revoking(lease.id) == revoked
    assert store.leases.leases_to_revoke(retry_at) == []
    with pytest.raises(LeaseStateConflict):
        store.leases.record_revoke_failure(lease.id, "late", retry_at)


def test_a_pending_lease_cannot_be_marked_revoked(store: Store) -> None:
    lease = pending(store, request_for())
    with pytest.raises(LeaseStateConflict):
        store.leases.mark_revoked(lease.id)


def test_a_restarted_agent_gets_a_new_lease_while_the_old_is_revoked(
    store: Store, clock: TickingClock
) -> None:
    old = active(store, request_for(), clock.last + timedelta(hours=1))
    store.leases.mark_revoking(old.id)  # Release on agent shutdown
    new = pending(store, request_for())
    assert new.generation == old.generation + 1


def test_pending_before_lists_rows_left_by_a_crash(store: Store, clock: TickingClock) -> None:
    old = pending(store, request_for("uid-old"))
    cutoff = clock() + timedelta(milliseconds=500)
    pending(store, request_for("uid-new"))
    done = pending(store, request_for("uid-done"))
    store.leases.complete_issue(done.id, "v/done", None)
    assert [r.id for r in store.leases.pending_before(cutoff)] == [old.id]


# -- selectors, roles, checkpoints --------------------------------------------------------------


def test_list_by_selector_matches_every_field(store: Store, clock: TickingClock) -> None:
    a = active(store, request_for("u-a"), clock.last)
    b = active(store, request_for("u-b", pod_name="api-b", role="orders-db-rw"), clock.last)
    c = active(store, request_for("u-c", namespace="billing", service_account="worker"), clock.last)
    d = active(store, request_for("u-d", cluster="prod-b"), clock.last)
    store.leases.mark_revoking(d.id)

    def ids(selector: Selector) -> list[str]:
        return [r.id for r in store.leases.list_by_selector(selector)]

    assert ids(Selector()) == [a.id, b.id, c.id]
    assert ids(Selector(cluster="prod-a", namespace="orders")) == [a.id, b.id]
    assert ids(Selector(service_account="worker")) == [c.id]
    assert ids(Selector(pod_name="api-b")) == [b.id]
    assert ids(Selector(role="orders-db-rw")) == [b.id]
    assert ids(Selector(cluster="prod-b")) == []
    revoking = Selector(cluster="prod-b", states=frozenset({LeaseState.REVOKING}))
    assert [r.id for r in store.leases.list_by_selector(revoking)] == [d.id]
    assert len(store.leases.list_by_selector(Selector(), limit=2)) == 2


def test_roles_are_put_read_listed_and_deleted(store: Store) -> None:
    spec = {"backend": "database", "mount": "kf-db", "vault_role": "ro", "ttl": 300}
    created = store.roles.put("orders-db-ro", spec)
    assert created.spec == spec
    updated = store.roles.put("orders-db-ro", {**spec, "ttl": 600})
    assert updated.spec["ttl"] == 600
    assert updated.updated_at > created.updated_at
    store.roles.put("app-config", {"backend": "kv-v2", "path": "app/config"})

    assert store.roles.get("orders-db-ro") == updated
    assert [r.name for r in store.roles.list()] == ["app-config", "orders-db-ro"]
    store.roles.delete("app-config")
    assert [r.name for r in store.roles.list()] == ["orders-db-ro"]
    with pytest.raises(RoleNotFound) as missing:
        store.roles.get("app-config")
    assert missing.value.reason == "ROLE_UNKNOWN"
    with pytest.raises(RoleNotFound):
        store.roles.delete("app-config")


def test_checkpoints_are_kept_per_chain_in_order(store: Store) -> None:
    first = store.checkpoints.add("broker-0", 10, "a" * 64, '{"count":10}')
    second = store.checkpoints.add("broker-0", 20, "b" * 64, '{"count":20}')
    store.checkpoints.add("broker-1", 5, "c" * 64, '{"count":5}')
    assert store.checkpoints.list("broker-0") == [first, second]
    assert [c.record_count for c in store.checkpoints.list("broker-1")] == [5]
    assert store.checkpoints.list("nobody") == []


# -- failures --------------------------------------------------------------------------------


def test_naive_datetimes_are_refused(store: Store) -> None:
    lease = pending(store, request_for())
    with pytest.raises(InvalidRequest) as refused:
        store.leases.complete_issue(lease.id, "v/1", datetime(2030, 1, 1))
    assert refused.value.field == "expires_at"


def test_a_broken_database_surfaces_as_store_unavailable(store: Store) -> None:
    lease = pending(store, request_for())
    with store.engine.begin() as conn:
        conn.execute(text("drop table leases"))
    with pytest.raises(StoreUnavailable) as failure:
        store.leases.get(lease.id)
    assert isinstance(failure.value.__cause__, SQLAlchemyError)
    assert failure.value.reason == "STORE_UNAVAILABLE"
    with pytest.raises(StoreUnavailable):
        store.leases.begin_issue(request_for("uid-2"))


def test_an_unreachable_postgresql_surfaces_as_store_unavailable() -> None:
    url = f"postgresql://keyferry:not-the-password@127.0.0.1:{free_port()}/keyferry"
    with pytest.raises(StoreUnavailable) as failure:
        Store.open(StoreSettings(url=SecretStr(url), timeout=2))
    assert "not-the-password" not in str(failure.value)


def test_a_sqlite_path_that_cannot_exist_surfaces_as_store_unavailable(tmp_path: object) -> None:
    url = "sqlite:////dev/null/keyferry/store.db"
    with pytest.raises(StoreUnavailable):
        Store.open(StoreSettings(url=SecretStr(url)))


def test_the_runner_keeps_store_calls_off_the_event_loop(store: Store) -> None:
    lease = pending(store, request_for())
    runner = StoreRunner(workers=2)

    async def main() -> tuple[LeaseRecord | None, str]:
        found = await runner.run(store.leases.find_live, *lease.pod_key, lease.credential)
        thread = await runner.run(lambda: threading.current_thread().name)
        return found, thread

    try:
        found, thread = asyncio.run(main())
    finally:
        runner.close()
    assert found == lease
    assert thread.startswith("keyferry-store")
