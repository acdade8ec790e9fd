"""Moving every sealed credential and row MAC to the ring's current key (`keyferry admin
reseal`), and finding what a ring cannot open (the broker's check at start).

Safe beside running brokers: each row is read again and rewritten in a transaction of its
own that holds the row (`FOR UPDATE` on PostgreSQL; BEGIN IMMEDIATE, the one write lock,
on SQLite), so a broker's own change of the row (a rotation re-seals, a release clears)
comes wholly before or after it, never between the read and the write; a row gone or
cleared meanwhile is counted as `changed`. A row whose MAC does not verify is never
re-MAC'd: it is counted as refused and named (RowTampered says how to put it right). How
the credential is re-sealed is the caller's (`Reseal`): the sealing format lives with the
service (service/common/sealing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .failures import store_errors
from .integrity import RowSigner, RowTampered, mac_key_id
from .records import LeaseRecord
from .schema import ClusterRequestRow, ClusterRow, LeaseRow, RoleRow

Sealed = TypeVar("Sealed", ClusterRow, ClusterRequestRow)

TABLES = ("leases", "clusters", "cluster_requests", "roles")
NAMED = 20  # refused rows named in a report, per table


class Reseal:
    """What the service gives: re-seal a blob under the current key (None when it is sealed
    under it already), or raise when it does not open; and the key id a blob names."""

    def lease(self, lease: LeaseRecord, blob: bytes) -> bytes | None:
        raise NotImplementedError

    def other(self, sealing_id: str, blob: bytes) -> bytes | None:
        """A cluster's (`cluster:NAME`) or a cluster request's credential."""
        raise NotImplementedError

    def key_of(self, blob: bytes) -> str | None:
        raise NotImplementedError


@dataclass
class TableReport:
    table: str
    current: int = 0  # already under the current key
    resealed: int = 0  # moved to the current key
    changed: int = 0  # changed by a broker meanwhile (it wrote it under its current key)
    refused: int = 0  # does not open or verify: left as it is
    named: list[str] = field(default_factory=list)  # the first refused rows, with why

    def refuse(self, key: str, why: str) -> None:
        self.refused += 1
        if len(self.named) < NAMED:
            self.named.append(f"{key}: {why}")


@dataclass(frozen=True)
class KeyUse:
    """One sealed credential or MAC and the key id it names (None: before key ids)."""

    table: str
    key: str
    kid: str | None


class Rekey:
    def __init__(self, sessions: sessionmaker[Session], rows: RowSigner, reseal: Reseal) -> None:
        self._sessions = sessions
        self._rows = rows
        self._reseal = reseal

    def uses(self) -> Iterator[KeyUse]:
        """Every sealed credential and MAC with the key id it names (read only)."""
        with store_errors("reading the key ids"), self._sessions() as session:
            leases = select(LeaseRow.id, LeaseRow.sealed_credential).where(
                LeaseRow.sealed_credential.is_not(None)
            )
            for lease_id, blob in session.execute(leases.execution_options(yield_per=500)):
                yield KeyUse("leases", lease_id, self._reseal.key_of(blob or b""))
            for name, blob, mac in session.execute(
                select(ClusterRow.name, ClusterRow.sealed_credential, ClusterRow.mac)
            ):
                yield KeyUse("clusters", f"{name} (credential)", self._reseal.key_of(blob))
                yield KeyUse("clusters", f"{name} (MAC)", mac_key_id(mac))
            for grant, blob, mac in session.execute(
                select(
                    ClusterRequestRow.grant_id,
                    ClusterRequestRow.sealed_credential,
                    ClusterRequestRow.mac,
                )
            ):
                if blob is not None:
                    yield KeyUse(
                        "cluster_requests", f"{grant} (credential)", self._reseal.key_of(blob)
                    )
                yield KeyUse("cluster_requests", f"{grant} (MAC)", mac_key_id(mac))
            for name, mac in session.execute(select(RoleRow.name, RoleRow.mac)):
                yield KeyUse("roles", f"{name} (MAC)", mac_key_id(mac))

    def run(self, progress: Callable[[TableReport], None] | None = None) -> list[TableReport]:
        """Re-seal and re-MAC every row under the current key, one transaction per row."""
        reports = []
        for table, keys, one in (
            ("leases", self._lease_ids, self._lease),
            ("clusters", self._cluster_names, self._cluster),
            ("cluster_requests", self._request_ids, self._request),
            ("roles", self._role_names, self._role),
        ):
            report = TableReport(table)
            for key in keys():
                with store_errors(f"re-sealing {table} row {key}"):
                    one(key, report)
                if progress is not None and (report.resealed + report.current) % 500 == 0:
                    progress(report)
            if progress is not None:
                progress(report)
            reports.append(report)
        return reports

    def _ids(self, column: Any, *where: Any) -> list[str]:
        with self._sessions() as session:
            return list(session.scalars(select(column).where(*where).order_by(column)))

    def _lease_ids(self) -> list[str]:
        return self._ids(LeaseRow.id, LeaseRow.sealed_credential.is_not(None))

    def _cluster_names(self) -> list[str]:
        return self._ids(ClusterRow.name)

    def _request_ids(self) -> list[str]:
        return self._ids(ClusterRequestRow.grant_id)

    def _role_names(self) -> list[str]:
        return self._ids(RoleRow.name)

    def _lease(self, lease_id: str, report: TableReport) -> None:
        with self._sessions.begin() as session:
            row = session.get(LeaseRow, lease_id, with_for_update=True)
            if row is None or row.sealed_credential is None:
                report.changed += 1
                return
            try:
                new = self._reseal.lease(LeaseRecord.model_validate(row), row.sealed_credential)
            except Exception as error:
                report.refuse(lease_id, str(error))
                return
            if new is None:
                report.current += 1
                return
            row.sealed_credential = new
            report.resealed += 1

    def _cluster(self, name: str, report: TableReport) -> None:
        def mac(row: ClusterRow) -> str:
            return self._rows.cluster(
                name=row.name,
                server=row.server,
                ca_pem=row.ca_pem,
                issuer=row.issuer,
                sealed_credential=row.sealed_credential,
                jwks=row.jwks,
            )

        self._sealed(
            ClusterRow,
            name,
            label=f"cluster:{name}",
            check=self._rows.check_cluster,
            mac=mac,
            report=report,
        )

    def _request(self, grant_id: str, report: TableReport) -> None:
        self._sealed(
            ClusterRequestRow,
            grant_id,
            label=f"cluster-request:{grant_id}",
            check=self._rows.check_cluster_request,
            mac=self._rows.cluster_request,
            report=report,
        )

    def _sealed(
        self,
        table: type[Sealed],
        key: str,
        *,
        label: str,
        check: Callable[[Sealed], None],
        mac: Callable[[Sealed], str],
        report: TableReport,
    ) -> None:
        """Re-seal one MAC'd row's credential (none: nothing to re-seal) and re-MAC it,
        after checking its MAC; a row that fails the check is refused."""
        with self._sessions.begin() as session:
            row = session.get(table, key, with_for_update=True)
            if row is None:
                report.changed += 1
                return
            try:
                check(row)
                blob = row.sealed_credential
                new = None if blob is None else self._reseal.other(label, blob)
            except Exception as error:
                report.refuse(key, str(error))
                return
            if new is None and self._rows.is_current(row.mac):
                report.current += 1
                return
            if new is not None:
                row.sealed_credential = new
            row.mac = mac(row)
            report.resealed += 1

    def _role(self, name: str, report: TableReport) -> None:
        with self._sessions.begin() as session:
            row = session.get(RoleRow, name, with_for_update=True)
            if row is None:
                report.changed += 1
                return
            try:
                self._rows.check_role(row.name, row.spec, row.mac)
            except RowTampered as error:
                report.refuse(name, str(error))
                return
            if self._rows.is_current(row.mac):
                report.current += 1
                return
            row.mac = self._rows.role(row.name, row.spec)
            report.resealed += 1
