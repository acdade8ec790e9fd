"""Selectors at the boundary, the batched runner, and the audit record that names a selector."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from broker.audit import AuditEvent, Principal, PrincipalKind
from broker.audit.records import SelectorField, parse_line, seal
from broker.errors import InvalidRequest
from broker.service.admin.selection import LeaseProgress, LeaseSelector, Outcome, run_batched
from broker.store import LeaseRecord, LeaseState

WHO = Principal(kind=PrincipalKind.OPERATOR, name="sam")
WHEN = datetime(2030, 1, 2, tzinfo=UTC)


def test_an_empty_selector_is_refused_with_how_to_select_everything() -> None:
    with pytest.raises(InvalidRequest) as refused:
        LeaseSelector.parse()
    assert refused.value.field == "selector"
    assert "--all" in refused.value.message
    assert "--namespace" in refused.value.message
    assert LeaseSelector.parse(all=True).describe() == "all"


def test_all_with_another_field_and_bad_values_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as mixed:
        LeaseSelector.parse(all=True, clusters=("a",))
    assert mixed.value.field == "selector.all"
    with pytest.raises(InvalidRequest) as blank:
        LeaseSelector.parse(namespaces=("orders", ""))
    assert blank.value.field == "selector.namespaces.1"
    with pytest.raises(InvalidRequest) as long:
        LeaseSelector.parse(pods=("p" * 254,))
    assert long.value.field == "selector.pods.0"


def test_a_selector_becomes_a_query_of_live_or_given_states() -> None:
    selector = LeaseSelector.parse(clusters=("a", "b"), roles=("db",), lease_ids=("l1",))
    query = selector.query(frozenset({LeaseState.ACTIVE}))
    assert query.clusters == {"a", "b"}
    assert query.roles == {"db"}
    assert query.lease_ids == {"l1"}
    assert query.namespaces == frozenset()
    assert query.states == {LeaseState.ACTIVE}
    assert selector.describe() == "clusters=a,b roles=db lease_ids=l1"


def test_an_audit_record_names_its_selector_and_older_records_keep_their_form() -> None:
    plain = seal(AuditEvent(who=WHO, action="rotate"), 0, "0" * 64, WHEN)
    assert "selector" not in json.loads(plain.line())
    assert "target" not in json.loads(plain.line())
    assert parse_line(plain.line()) == plain
    chosen: dict[SelectorField, tuple[str, ...]] = {
        "clusters": ("a", "b"),
        "namespaces": ("orders",),
    }
    record = seal(
        AuditEvent(who=WHO, action="rotate.selected", selector=chosen), 1, plain.hash, WHEN
    )
    line = json.loads(record.line())
    assert line["selector"] == {"clusters": ["a", "b"], "namespaces": ["orders"]}
    assert parse_line(record.line()).computed_hash() == record.hash


def _lease(number: int) -> LeaseRecord:
    return LeaseRecord(
        id=f"l{number}",
        vault_lease_id=None,
        state=LeaseState.ACTIVE,
        cluster="a",
        namespace="orders",
        service_account="api",
        pod_name=f"p{number}",
        pod_uid=f"u{number}",
        credential="db",
        role="db",
        generation=1,
        expires_at=None,
        revoke_after=None,
        created_at=WHEN,
        updated_at=WHEN,
        last_error=None,
        revoke_attempts=0,
    )


async def test_the_batched_runner_keeps_to_its_concurrency_and_reports_every_item() -> None:
    running = peak = 0

    async def step(number: int) -> LeaseProgress:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return LeaseProgress(_lease(number), Outcome.ROTATED)

    done = [p.lease.id async for p in run_batched(list(range(25)), 3, step)]
    assert sorted(done) == sorted(f"l{n}" for n in range(25))
    assert peak == 3


async def test_the_batched_runner_starts_nothing_new_once_its_consumer_leaves() -> None:
    started: list[int] = []
    gates = [asyncio.Event() for _ in range(10)]
    gates[0].set()

    async def step(number: int) -> LeaseProgress:
        started.append(number)
        await gates[number].wait()
        return LeaseProgress(_lease(number), Outcome.ROTATED)

    runs = run_batched(list(range(10)), 2, step)
    assert (await anext(runs)).lease.id == "l0"
    while len(started) < 3:  # worker 1 holds item 1, worker 0 took item 2
        await asyncio.sleep(0)
    closing = asyncio.ensure_future(runs.aclose())  # the client went away
    await asyncio.sleep(0)
    for gate in gates:
        gate.set()
    await closing
    assert sorted(started) == [0, 1, 2]  # those under way finished; no more began
