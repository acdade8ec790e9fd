"""Role and cluster rows carry a MAC the store checks on every load (issue 18), and rows
written before MACs existed are adopted once, by the start that migrates the store.

An in-memory SQLite store; rows are edited with plain SQL, as someone holding only a
database login would. The bed test is tests/security/test_store_edits.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from broker.service.common.grant_terms import cluster_change_grant, cluster_change_of
from broker.store import ClusterRequestRecord, RoleNotFound, RowSigner, RowTampered, Store
from broker.store.integrity import adopt_unsigned_rows
from broker.store.migrate import _config, upgrade

SIGNER = RowSigner(b"r" * 32)
START, HOUR = datetime(2030, 1, 1, tzinfo=UTC), timedelta(hours=1)
SPEC = {"backend": "database", "mount": "db", "role": "ro", "ttl": 300}
JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}


def memory_engine() -> Engine:
    return create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )


@pytest.fixture
def store() -> Iterator[Store]:
    engine = memory_engine()
    upgrade(engine)
    opened = Store(engine, rows=SIGNER)
    yield opened
    opened.close()


def edit(store: Store, sql: str, **values: object) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(sql), values)


def add_cluster(store: Store, name: str = "east") -> None:
    store.clusters.add(
        name=name,
        server="https://east.example:6443",
        ca_pem="CA",
        issuer="https://east.example",
        sealed_credential=b"\x02sealed",
        jwks=JWKS,
    )


def test_a_role_edited_in_the_database_is_refused_naming_the_row_and_the_fix(
    store: Store,
) -> None:
    store.roles.put("orders-db-ro", SPEC)
    assert store.roles.get("orders-db-ro").spec == SPEC
    edit(store, "UPDATE roles SET spec = :spec", spec='{"backend": "database", "mount": "x"}')
    with pytest.raises(RowTampered) as refused:
        store.roles.get("orders-db-ro")
    assert refused.value.table == "roles"
    assert refused.value.key == "orders-db-ro"
    assert "keyferry roles apply" in refused.value.message
    with pytest.raises(RowTampered):
        store.roles.list()
    store.roles.put("orders-db-ro", SPEC)  # applied again: trusted again
    assert store.roles.get("orders-db-ro").spec == SPEC


def test_a_mac_removed_or_copied_from_another_row_does_not_help(store: Store) -> None:
    store.roles.put("a", SPEC)
    store.roles.put("b", {**SPEC, "ttl": 1})
    edit(
        store,
        "UPDATE roles SET spec = (SELECT spec FROM roles WHERE name = 'a'), "
        "mac = (SELECT mac FROM roles WHERE name = 'a') WHERE name = 'b'",
    )
    with pytest.raises(RowTampered):
        store.roles.get("b")
    edit(store, "UPDATE roles SET mac = NULL WHERE name = 'a'")
    with pytest.raises(RowTampered, match="has no integrity MAC"):
        store.roles.get("a")
    with pytest.raises(RoleNotFound):
        store.roles.get("c")


def test_a_cluster_edited_in_the_database_is_refused_and_can_still_be_removed(
    store: Store,
) -> None:
    add_cluster(store)
    add_cluster(store, "west")
    store.clusters.record_jwks("east", {"keys": []})  # a new JWKS gets a new MAC
    assert store.clusters.get("east").jwks == {"keys": []}
    edit(store, "UPDATE clusters SET server = 'https://attacker:6443' WHERE name = 'east'")
    with pytest.raises(RowTampered) as refused:
        store.clusters.get("east")
    assert "keyferry clusters deregister" in refused.value.message
    intact, tampered = store.clusters.list_intact()
    assert [c.name for c in intact] == ["west"]
    assert [(e.table, e.key) for e in tampered] == [("clusters", "east")]
    with pytest.raises(RowTampered):
        store.clusters.list()
    with pytest.raises(RowTampered):  # a refreshed JWKS must not bless the edited server
        store.clusters.record_jwks("east", JWKS)
    assert store.clusters.exists("east")
    store.clusters.delete("east")
    assert not store.clusters.exists("east")


def test_rows_from_before_macs_are_adopted_once_by_the_migrating_start() -> None:
    engine = memory_engine()
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0008")
        connection.execute(
            text("INSERT INTO roles (name, spec, updated_at) VALUES ('old', :spec, :at)"),
            {"spec": '{"backend": "kv-v2", "path": "app/config"}', "at": "2030-01-01 00:00:00"},
        )
    adopted: list[int] = []
    upgrade(engine, lambda c, before: adopted.append(adopt_unsigned_rows(SIGNER, c, before)))
    assert adopted == [1]
    store = Store(engine, rows=SIGNER)
    assert store.roles.get("old").spec == {"backend": "kv-v2", "path": "app/config"}
    # Later starts adopt nothing: a MAC removed afterwards is refused, not re-adopted.
    edit(store, "UPDATE roles SET mac = NULL")
    upgrade(engine, lambda c, before: adopted.append(adopt_unsigned_rows(SIGNER, c, before)))
    assert adopted == [1, 0]
    with pytest.raises(RowTampered):
        store.roles.get("old")
    store.close()


def test_a_store_without_the_key_neither_writes_nor_checks_macs() -> None:
    engine = memory_engine()
    upgrade(engine)
    plain = Store(engine)
    plain.roles.put("r", SPEC)
    assert plain.roles.get("r").spec == SPEC
    with pytest.raises(RowTampered):
        Store(engine, rows=SIGNER).roles.get("r")
    plain.close()


def test_a_pending_cluster_request_edited_before_its_approval_is_refused(store: Store) -> None:
    grant = cluster_change_grant(
        "register", "east", "register cluster east", requester="pat", now=START, wait=HOUR
    )
    assert cluster_change_of(grant) == ("register", "east")
    store.cluster_requests.add(
        ClusterRequestRecord(
            grant_id=grant.id,
            kind="register",
            name="east",
            server="https://east.example:6443",
            ca_pem="CA",
            issuer="https://east.example",
            sealed_credential=b"\x02sealed",
            force=False,
            created_at=START,
        )
    )
    assert store.cluster_requests.get(grant.id).server == "https://east.example:6443"
    edit(store, "UPDATE cluster_requests SET server = 'https://attacker:6443'")
    with pytest.raises(RowTampered, match="keyferry access deny"):
        store.cluster_requests.get(grant.id)


def test_only_cluster_change_grants_are_taken_for_one() -> None:
    for role in ("orders-db-ro", "cluster:", "cluster:rename:x", "cluster:register:"):
        grant = cluster_change_grant("register", "x", "r", requester="p", now=START, wait=HOUR)
        assert cluster_change_of(grant.model_copy(update={"role": role})) is None
    with pytest.raises(ValueError, match="register"):
        cluster_change_grant("rename", "x", "r", requester="p", now=START, wait=HOUR)
