"""Selecting leases by selector on a fleet of 100,000 rows, on SQLite and the bed's PostgreSQL:
the right leases, page by page, each selector field read through an index, and a
ListLeases page read in its own order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, text

from broker.store import LeaseQuery, LeaseState, Selector, Store, StoreSettings
from broker.store.leases import by_selector
from broker.store.schema import LeaseRow
from tests.scene.stores import postgres_database, sqlite_url

pytestmark = pytest.mark.bed
FLEET = 100_000
CLUSTERS, NAMESPACES, ROLES = 4, 50, 20
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A store holding FLEET leases: pod i is in cluster c<i%4>, namespace ns<i%50>, with
    role r<i%20>; every tenth lease is revoked."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path_factory.mktemp("fleet"))
        yield from _seeded(url)
    else:
        with postgres_database(request.getfixturevalue("postgres")) as url:
            yield from _seeded(url)


def _seeded(url: str) -> Iterator[Store]:
    store = Store.open(StoreSettings(url=SecretStr(url), pool_size=4))
    with store.engine.begin() as conn:
        _insert_fleet(conn)
    if not store.refresh_statistics():  # PostgreSQL: what autovacuum would do, now
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    yield store
    store.close()


def _insert_fleet(conn: Connection) -> None:
    """The FLEET rows of `_row`, each value bound as its column's type binds it (so stored as
    `insert(LeaseRow)` stores it), sent without SQLAlchemy's per-row statement work: COPY on
    PostgreSQL, one executemany on SQLite (insert() took most of the module's set-up)."""
    dialect = conn.dialect
    names = list(_row(0))
    columns = LeaseRow.__table__.c
    binds = [columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]

    def values(i: int) -> tuple[Any, ...]:
        row = _row(i)
        return tuple(
            row[name] if bind is None else bind(row[name])
            for name, bind in zip(names, binds, strict=True)
        )

    listed = ", ".join(names)
    if dialect.name == "postgresql":
        raw: Any = conn.connection.dbapi_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY leases ({listed}) FROM STDIN") as copy:
            for i in range(FLEET):
                copy.write_row(values(i))
    else:
        marks = ", ".join("?" * len(names))
        conn.exec_driver_sql(
            f"INSERT INTO leases ({listed}) VALUES ({marks})",  # noqa: S608 - LeaseRow columns
            [values(i) for i in range(FLEET)],
        )


def _row(i: int) -> dict[str, object]:
    return {
        "id": str(uuid.UUID(int=i)),
        "vault_lease_id": f"keyferry/db/creds/ro/{i}",
        "state": LeaseState.REVOKED if i % 10 == 0 else LeaseState.ACTIVE,
        "cluster": f"c{i % CLUSTERS}",
        "namespace": f"ns{i % NAMESPACES}",
        "service_account": f"sa{i % 7}",
        "pod_name": f"pod-{i}",
        "pod_uid": f"uid-{i}",
        "credential": "db",
        "role": f"r{i % ROLES}",
        "generation": 1,
        "expires_at": NOW + timedelta(hours=1),
        "revoke_after": None,
        "created_at": NOW,
        "updated_at": NOW,
        "last_error": None,
        "revoke_attempts": 0,
        "vault_lease": None,
        "sealed_credential": None,
    }


def _all_pages(store: Store, query: LeaseQuery, page: int) -> list[str]:
    found: list[str] = []
    after = None
    while True:
        chunk = store.leases.select_page(query, after, page)
        found += [lease.id for lease in chunk]
        if len(chunk) < page:
            return found
        after = chunk[-1].id


def test_a_selector_reaches_exactly_its_leases_page_by_page(fleet: Store) -> None:
    query = LeaseQuery(
        clusters=frozenset({"c1", "c2"}),
        namespaces=frozenset({"ns5", "ns6", "ns9"}),
        roles=frozenset({"r6", "r5", "r9"}),
        states=frozenset({LeaseState.ACTIVE}),
    )
    expected = {
        str(uuid.UUID(int=i))
        for i in range(FLEET)
        if i % 10
        and i % CLUSTERS in (1, 2)
        and i % NAMESPACES in (5, 6, 9)
        and i % ROLES in (5, 6, 9)
    }
    found = _all_pages(fleet, query, page=97)
    assert len(found) == len(set(found)) == len(expected) > 0
    assert set(found) == expected
    assert found == sorted(found)  # keyset pages by id: nothing skipped, nothing twice

    pods = LeaseQuery(pod_names=frozenset({"pod-11", "pod-20", "pod-99999"}))
    assert {lease.pod_name for lease in fleet.leases.select_page(pods)} == {"pod-11", "pod-99999"}


@pytest.mark.parametrize(
    ("column", "value"),
    [("role", "r3"), ("namespace", "ns7"), ("pod_name", "pod-5"), ("id", str(uuid.UUID(int=5)))],
)
def test_each_selector_field_alone_is_read_through_an_index(
    fleet: Store, column: str, value: str
) -> None:
    """The plan the database picks for one selector field looks leases up through an
    index; it never reads the whole table."""
    where = f"state IN ('active') AND {column} IN ('{value}') ORDER BY id LIMIT 500"
    sqlite = fleet.engine.dialect.name == "sqlite"
    explain = "EXPLAIN QUERY PLAN" if sqlite else "EXPLAIN"
    statement = text(f"{explain} SELECT id FROM leases WHERE {where}")  # noqa: S608 (the test's own fixed clauses)
    with fleet.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(statement))
    if sqlite:
        assert "SEARCH leases USING" in plan, plan
    else:
        assert "Index" in plan, plan
        assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize(
    ("selector", "limit", "sqlite_index"),
    [
        (Selector(cluster="c1", namespace="ns1", pod_name="pod-5"), None, "ix_leases_pod_name"),
        (Selector(cluster="c1", namespace="ns1", service_account="sa1"), 100, "ix_leases_workload"),
        (Selector(role="r3"), 100, "ix_leases_role_created"),
        (Selector(cluster="c1"), 100, "ix_leases_cluster_created"),
    ],
    ids=["pod", "namespace and account", "page of a role", "page of a cluster"],
)
def test_a_listleases_selection_reads_its_most_selective_index(
    fleet: Store, selector: Selector, limit: int | None, sqlite_index: str
) -> None:
    """With the statistics the store refreshes (SQLite) or autovacuum keeps (PostgreSQL),
    a pod's leases come from the pod index, not from a walk of its cluster in created_at
    order; a page of a cluster or a role is the first entries of one ordered index range,
    with no sort of every matching row."""
    sqlite = fleet.engine.dialect.name == "sqlite"
    query = by_selector(selector, limit).compile(
        fleet.engine, compile_kwargs={"literal_binds": True}
    )
    explain = "EXPLAIN QUERY PLAN" if sqlite else "EXPLAIN"
    with fleet.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(text(f"{explain} {query}")))
    paged = limit is not None and selector.namespace is None
    if sqlite:
        assert f"USING INDEX {sqlite_index} " in plan, plan
        assert not paged or "TEMP B-TREE" not in plan, plan
    else:
        assert "Seq Scan" not in plan, plan
        assert not paged or "Sort" not in plan, plan
