"""With the audit chain in the store (`audit.sink: store`), a lease's change and its audit
record commit in one transaction (issue 18): a chain append that fails inside it (as a
replica killed between the two would) leaves neither the change nor the record. On
SQLite, with the lease bench (lease_bench.py) and its chain in the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from broker.audit.records import GENESIS, AuditRecord, parse_line
from broker.errors import KeyferryError, StoreUnavailable
from broker.service.engine.lease_engine import IssueOrder
from broker.store import LeaseState, Store
from tests.unit.lease_bench import ROLES, WHO, Bench, Clock, begun, issued, open_bench


@pytest.fixture
async def chained(store: Store, clock: Clock, tmp_path: Path) -> AsyncIterator[Bench]:
    async with open_bench(store, clock, tmp_path, chain_in_store=True) as bench:
        yield bench


def chain(bench: Bench) -> list[AuditRecord]:
    """The chain's records as the store keeps them (not the file copy), checked to form
    one unbroken chain: each on the one before, numbered in order."""
    records = [parse_line(line) for line in bench.store.audit_chain.lines("broker")]
    prev = GENESIS
    for seq, record in enumerate(records):
        assert (record.seq, record.prev, record.hash) == (seq, prev, record.computed_hash())
        prev = record.hash
    assert bench.store.audit_chain.head("broker") in (None, (len(records), prev))
    return records


def actions(bench: Bench, lease_id: str) -> list[str]:
    """The chain's records about one lease."""
    return [r.action for r in chain(bench) if r.lease_id == lease_id]


def kill_chain(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every append to the store's chain fails: inside a lifecycle step's transaction after
    its rows were written (the step is rolled back), or on its own (the older path, after
    the change had committed)."""
    repository = bench.store.audit_chain
    real: Callable[..., Any] = repository.append_on

    def after_writing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise OperationalError("audit append", None, Exception("replica killed"))

    def never(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("lease store: appending an audit record failed")

    monkeypatch.setattr(repository, "append_on", after_writing)
    monkeypatch.setattr(repository, "append_all", never)


async def test_an_issue_and_its_record_commit_together(chained: Bench) -> None:
    lease = await issued(chained)
    assert lease.state is LeaseState.ACTIVE
    assert actions(chained, lease.id) == ["lease.active"]


async def test_an_issue_whose_record_fails_is_not_active(
    chained: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = await begun(chained)
    kill_chain(chained, monkeypatch)
    with pytest.raises(KeyferryError):
        await chained.engine.issue(IssueOrder(pending, ROLES["database"], WHO, "r"))
    assert chained.state(pending.id) is not LeaseState.ACTIVE
    assert "lease.active" not in actions(chained, pending.id)
    assert chained.backends.database.alive == set()  # Vault's lease undone


async def test_a_batch_of_issues_whose_records_fail_is_not_active(
    chained: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = await begun(chained)
    kill_chain(chained, monkeypatch)
    order = IssueOrder(pending, ROLES["database"], WHO, "r")
    outcomes = await chained.engine.issue_many([order])
    assert all(isinstance(o, KeyferryError) for o in outcomes)
    assert chained.state(pending.id) is not LeaseState.ACTIVE
    assert "lease.active" not in actions(chained, pending.id)


async def test_an_end_whose_record_fails_leaves_the_lease_active(
    chained: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await issued(chained)
    kill_chain(chained, monkeypatch)
    with pytest.raises(KeyferryError):
        await chained.engine.end(lease, WHO, "RELEASED", "r-end")
    assert chained.state(lease.id) is LeaseState.ACTIVE
    assert actions(chained, lease.id) == ["lease.active"]


async def test_a_kv_end_at_once_whose_records_fail_leaves_it_active(
    chained: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await issued(chained, ROLES["kv"])
    handle = chained.store.leases.handle(lease.id)
    kill_chain(chained, monkeypatch)
    with pytest.raises(KeyferryError):
        await chained.revoker.end_at_once(lease, WHO, "RELEASED", "r-end")
    assert handle.vault_lease is not None
    assert chained.state(lease.id) is LeaseState.ACTIVE
    assert actions(chained, lease.id) == ["lease.active"]


async def test_a_settle_whose_record_fails_leaves_it_revoking(
    chained: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await issued(chained)
    chained.store.leases.mark_revoking(lease.id)
    kill_chain(chained, monkeypatch)
    with pytest.raises(KeyferryError):
        await chained.revoker.settle(lease.id, WHO, "r-settle")
    assert chained.state(lease.id) is LeaseState.REVOKING
    assert "lease.revoked" not in actions(chained, lease.id)


async def test_an_end_records_each_step_once_with_the_chain_in_the_store(chained: Bench) -> None:
    lease = await issued(chained)
    ended = await chained.engine.end(lease, WHO, "RELEASED", "r-end")
    assert ended.state is LeaseState.REVOKED
    assert actions(chained, lease.id) == ["lease.active", "lease.revoking", "lease.revoked"]
    kv = await issued(chained, ROLES["kv"])
    await chained.revoker.end_at_once(kv, WHO, "RELEASED", "r-kv")
    assert actions(chained, kv.id) == ["lease.active", "lease.revoking", "lease.revoked"]
