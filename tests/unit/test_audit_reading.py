"""Reading the audit trail back (broker/audit/reading.py): newest first, filtered, in bounded
pages, from the log file and from the chain in a SQLite store; and the activity per minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker.audit import (
    AuditEvent,
    AuditLog,
    Decision,
    FileRecords,
    JsonLinesSink,
    Principal,
    PrincipalKind,
    RecordFilter,
    StoreChainLog,
    StoreRecords,
    activity,
    read_page,
)
from broker.audit.reading import CHUNK
from broker.store import Store, StoreSettings

START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
ALICE = Principal(kind=PrincipalKind.OPERATOR, name="alice")
JOB = Principal(kind=PrincipalKind.SYSTEM, name="broker.revoke")


class Clock:
    """Each reading 20 seconds after the previous one: three records a minute."""

    def __init__(self) -> None:
        self.now = START - timedelta(seconds=20)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=20)
        return self.now


def events(count: int) -> list[AuditEvent]:
    """Cycling through an operator's rotation decision, a rotated-away lease, a revocation
    at Vault and a deny summary standing for 3 refusals."""
    made = []
    for index in range(count):
        lease = f"lease-{index:05d}"
        kind = index % 4
        if kind == 0:
            made.append(
                AuditEvent(who=ALICE, action="rotate", decision=Decision.ALLOW, lease_id=lease)
            )
        elif kind == 1:
            made.append(
                AuditEvent(who=JOB, action="lease.revoking", reason="ROTATED", lease_id=lease)
            )
        elif kind == 2:
            made.append(AuditEvent(who=JOB, action="lease.revoked", lease_id=lease))
        else:
            made.append(
                AuditEvent(
                    who=ALICE,
                    action="issue",
                    decision=Decision.DENY,
                    reason="POLICY_DENIED",
                    count=3,
                )
            )
    return made


def file_source(tmp_path: Path, count: int) -> FileRecords:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(JsonLinesSink(path), clock=Clock())
    log.append_all(events(count))  # one write, one fsync
    return FileRecords(path)


def test_pages_go_newest_first_and_continue_where_they_stopped(tmp_path: Path) -> None:
    source = file_source(tmp_path, 1000)  # more than one chunk of the file
    assert (tmp_path / "audit.jsonl").stat().st_size > 2 * CHUNK
    seen: list[int] = []
    before = None
    while True:
        page = read_page(source, RecordFilter(), before=before, size=128, scan_limit=10_000)
        seen += [record.seq for record in page.records]
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == list(range(999, -1, -1))


def test_filters_combine_and_a_scan_stops_at_its_limit_saying_where_to_go_on(
    tmp_path: Path,
) -> None:
    source = file_source(tmp_path, 400)
    wanted = RecordFilter(actions=frozenset({"rotate"}), principal="alice")
    page = read_page(source, wanted, before=None, size=500, scan_limit=10_000)
    assert [record.seq for record in page.records] == list(range(396, -1, -4))
    assert {record.action for record in page.records} == {"rotate"}

    one = read_page(
        source, RecordFilter(lease_id="lease-00010"), before=None, size=5, scan_limit=10_000
    )
    assert [(r.seq, r.lease_id) for r in one.records] == [(10, "lease-00010")]

    nothing = RecordFilter(actions=frozenset({"roles.apply"}))
    stopped = read_page(source, nothing, before=None, size=10, scan_limit=50)
    assert (stopped.records, stopped.scanned, stopped.next_before) == ([], 50, 350)
    rest = read_page(source, nothing, before=stopped.next_before, size=10, scan_limit=1000)
    assert (rest.records, rest.scanned, rest.next_before) == ([], 350, None)


def test_time_bounds_and_a_scan_that_stops_at_since(tmp_path: Path) -> None:
    source = file_source(tmp_path, 30)  # 10 minutes, 3 records each
    since, until = START + timedelta(minutes=2), START + timedelta(minutes=4)
    page = read_page(
        source, RecordFilter(since=since, until=until), before=None, size=100, scan_limit=1000
    )
    assert [record.seq for record in page.records] == list(range(11, 5, -1))
    assert page.next_before is None
    assert page.scanned == 30 - 6  # stopped at the first record before `since`


def test_activity_counts_each_minute_and_a_summary_counts_its_refusals(tmp_path: Path) -> None:
    source = file_source(tmp_path, 12)  # minutes 0 to 3
    found = activity(source, START + timedelta(seconds=30), START + timedelta(minutes=5), 1000)
    assert found.since == START
    assert len(found.minutes) == 6
    totals = [(m.issued, m.rotated, m.revoked, m.refused) for m in found.minutes]
    # minute 0: rotate, revoking(ROTATED), revoked; minute 1: deny x3, rotate, revoking ...
    assert totals == [
        (0, 1, 1, 0),
        (0, 1, 0, 3),
        (0, 0, 1, 3),
        (0, 1, 1, 3),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
    ]
    assert not found.truncated
    cut = activity(source, START, START + timedelta(minutes=5), 5)
    assert cut.truncated


def test_a_damaged_line_is_skipped_by_the_reader(tmp_path: Path) -> None:
    source = file_source(tmp_path, 5)
    with source.path.open("ab") as handle:
        handle.write(b"{not json\n")
    page = read_page(source, RecordFilter(), before=None, size=10, scan_limit=100)
    assert [record.seq for record in page.records] == [4, 3, 2, 1, 0]


def test_the_chain_in_the_store_reads_the_same(tmp_path: Path) -> None:
    store = Store.open(StoreSettings(url=SecretStr(f"sqlite:///{tmp_path / 'store.db'}")))
    try:
        chain = StoreChainLog(store.audit_chain, chain="c", clock=Clock())
        chain.append_all(events(520))
        source = StoreRecords(store.audit_chain, "c")
        page = read_page(source, RecordFilter(), before=None, size=500, scan_limit=10_000)
        assert [r.seq for r in page.records] == list(range(519, 19, -1))
        later = read_page(source, RecordFilter(), before=3, size=500, scan_limit=10_000)
        assert [r.seq for r in later.records] == [2, 1, 0]
        assert later.next_before is None
        assert len(source.lines()) == 520
    finally:
        store.close()


@pytest.mark.parametrize("missing", ["audit.jsonl"])
def test_a_log_not_written_yet_reads_as_empty(tmp_path: Path, missing: str) -> None:
    source = FileRecords(tmp_path / missing)
    assert read_page(source, RecordFilter(), before=None, size=10, scan_limit=10).records == []
    assert source.lines() == []
