"""Reading the audit trail back: newest first, filtered, a page at a time, and the activity
per minute over the last hours.

The trail is read where the broker writes it: the JSON-lines log (`FileRecords`, read
backwards from its end in chunks) or the chain in the store (`StoreRecords`, pages by
sequence number). Both yield log lines newest first; `read_page` and `activity` decide on
the cheap JSON form of each line and validate only the records they return.

Records are in chain order, and their times only grow (up to the clock skew between
replicas), so a scan newest first stops at the first record older than `since`. Every scan
is bounded (`scan_limit` lines): a filter that matches nothing cannot read the whole trail
in one call; the page then says where to go on (`next_before`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from broker.store import AuditChainRepository

from .records import AuditRecord, format_time, parse_line

CHUNK = 64 * 1024
STORE_PAGE = 500
ROTATED = "ROTATED"


class RecordSource(Protocol):
    """An audit chain's lines, newest first; blocking (call from a thread)."""

    def newest_first(self, before: int | None) -> Iterator[str]:
        """Lines of records whose `seq` is below `before` (all when None), newest first.
        A file source may yield later lines too: the reader skips them by `seq`."""
        ...

    def lines(self) -> list[str]:
        """Every line in chain order (what verify reads)."""
        ...


class FileRecords:
    """The JSON-lines log, read backwards from its end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def newest_first(self, before: int | None) -> Iterator[str]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            yield from _lines_backwards(fd)
        finally:
            os.close(fd)

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes().decode("utf-8", errors="replace")
        found = data.split("\n")
        return found[:-1] if found and found[-1] == "" else found


class StoreRecords:
    """The chain several replicas share in the store."""

    def __init__(self, repository: AuditChainRepository, chain: str) -> None:
        self._repository = repository
        self._chain = chain

    def newest_first(self, before: int | None) -> Iterator[str]:
        while True:
            page = self._repository.newest_first(self._chain, before, STORE_PAGE)
            for _seq, line in page:
                yield line
            if len(page) < STORE_PAGE:
                return
            before = page[-1][0]

    def lines(self) -> list[str]:
        return self._repository.lines(self._chain)


def _lines_backwards(fd: int) -> Iterator[str]:
    position = os.fstat(fd).st_size
    rest = b""
    while position > 0:
        start = max(0, position - CHUNK)
        rest = os.pread(fd, position - start, start) + rest
        position = start
        parts = rest.split(b"\n")
        rest = parts[0]  # may continue in the chunk before
        for part in reversed(parts[1:]):
            if part:
                yield part.decode("utf-8", errors="replace")
    if rest:
        yield rest.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class RecordFilter:
    """Which records a reader wants; unset fields match everything. `since` is inclusive,
    `until` exclusive; `principal` is a principal's name (an operator, `cluster/namespace/
    service account`, a broker job)."""

    actions: frozenset[str] = frozenset()
    principal: str | None = None
    lease_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, raw: dict[str, Any]) -> bool:
        if self.actions and raw.get("action") not in self.actions:
            return False
        if self.principal is not None and (raw.get("who") or {}).get("name") != self.principal:
            return False
        if self.lease_id is not None and raw.get("lease_id") != self.lease_id:
            return False
        return not (self.until is not None and str(raw.get("time", "")) >= _at(self.until))


@dataclass(frozen=True)
class RecordPage:
    """Records newest first; `next_before` is where the next page starts (the `seq` to read
    below), None once the trail's start or `since` was reached."""

    records: list[AuditRecord]
    next_before: int | None
    scanned: int


def read_page(
    source: RecordSource,
    wanted: RecordFilter,
    *,
    before: int | None,
    size: int,
    scan_limit: int,
) -> RecordPage:
    """Up to `size` records matching `wanted`, newest first, below `before`; at most
    `scan_limit` lines are read."""
    found: list[AuditRecord] = []
    scanned = 0
    since = _at(wanted.since) if wanted.since is not None else None
    for line in source.newest_first(before):
        raw = _raw(line)
        if raw is None:
            continue  # damage: `verify` names it
        seq = raw.get("seq")
        if not isinstance(seq, int) or (before is not None and seq >= before):
            continue
        if since is not None and str(raw.get("time", "")) < since:
            return RecordPage(found, None, scanned)
        scanned += 1
        if wanted.matches(raw):
            record = _record(line)
            if record is not None:
                found.append(record)
        if len(found) >= size or scanned >= scan_limit:
            return RecordPage(found, seq if seq > 0 else None, scanned)
    return RecordPage(found, None, scanned)


@dataclass
class Counts:
    """What happened in one minute: leases issued (`lease.active`, a rotation's new
    generation included), rotated away (`lease.revoking` for ROTATED), revoked at Vault
    (`lease.revoked`), and refusals (deny records; a summary record counts its `count`)."""

    issued: int = 0
    rotated: int = 0
    revoked: int = 0
    refused: int = 0


@dataclass(frozen=True)
class Activity:
    """Per-minute counts from `since` (a whole minute) to now; `truncated` when the scan
    limit was reached before `since` (older minutes then undercount)."""

    since: datetime
    minutes: list[Counts]
    truncated: bool
    scanned: int = field(default=0)


def activity(source: RecordSource, since: datetime, now: datetime, scan_limit: int) -> Activity:
    """Counts per minute from `since` (rounded down to its minute) up to `now`."""
    start = since.replace(second=0, microsecond=0)
    count = int((now - start) / timedelta(minutes=1)) + 1
    minutes = [Counts() for _ in range(count)]
    start_text = _at(start)
    scanned = 0
    for line in source.newest_first(None):
        raw = _raw(line)
        if raw is None:
            continue
        time = str(raw.get("time", ""))
        if time < start_text:
            return Activity(start, minutes, False, scanned)
        scanned += 1
        _count(raw, _minute(time, start), minutes)
        if scanned >= scan_limit:
            return Activity(start, minutes, True, scanned)
    return Activity(start, minutes, False, scanned)


def _count(raw: dict[str, Any], index: int | None, minutes: list[Counts]) -> None:
    if index is None or not 0 <= index < len(minutes):
        return
    bucket = minutes[index]
    action = raw.get("action")
    if action == "lease.active":
        bucket.issued += 1
    elif action == "lease.revoking" and raw.get("reason") == ROTATED:
        bucket.rotated += 1
    elif action == "lease.revoked":
        bucket.revoked += 1
    if raw.get("decision") == "deny":
        count = raw.get("count")
        bucket.refused += count if isinstance(count, int) and count > 0 else 1


def _minute(time: str, start: datetime) -> int | None:
    try:
        at = datetime.strptime(time, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None
    return int((at - start) / timedelta(minutes=1))


def _raw(line: str) -> dict[str, Any] | None:
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None


def _record(line: str) -> AuditRecord | None:
    try:
        return parse_line(line)
    except (ValueError, ValidationError):
        return None


def _at(value: datetime) -> str:
    """A time as the records write it, so times compare as strings."""
    return format_time(value)
