"""MACs of the rows the broker trusts: roles and registered clusters (issue 18).

A role row says which Vault path a pod's credential comes from; a cluster row says which
API server (URL, CA) and which signing keys (JWKS) vouch for a cluster's pods. Someone
who can write the database but holds no broker key could otherwise point a role at a
path of their choosing or make a cluster of their own trusted. Each such row carries an
HMAC-SHA256 of its content under a key derived from the sealing key (so held in the
broker's settings or secret files, never in the database); the store checks it on every
load and refuses a row whose MAC is missing or wrong with RowTampered, which names the
row and how to put it right.

What is covered: a role's name and spec; a cluster's name, server, CA, issuer, sealed
credential and pinned JWKS. Times (updated_at, last_contact, jwks_fetched_at) are not.

Rows written before MACs existed are adopted once, by the start that migrates the store to
revision ROW_MACS_REVISION (inside that migration's transaction and lock): trust on first
use, documented in docs/security.md. After that a row without a MAC is refused like one
with a wrong MAC. A store opened without the key (`keyferry audit verify`, tests' observers)
neither writes nor checks MACs: a row it writes is refused by the broker until re-applied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from sqlalchemy import Connection, select, update

from broker.errors import FailedPrecondition

from .schema import ClusterRow, RoleRow

ROW_MACS_REVISION = "0009"  # the migration that added the mac columns

ROLE_FIX = (
    "check what changed, then apply the role again (`keyferry roles apply -f FILE`, or "
    "restart the broker with its roles file)"
)
CLUSTER_FIX = (
    "check what changed, then `keyferry clusters deregister NAME` and register it again "
    "(`keyferry clusters register ...`)"
)


class RowTampered(FailedPrecondition):
    """A role or cluster row does not match its MAC: edited outside the broker."""

    audit_reason = "ROW_MAC_MISMATCH"

    def __init__(self, table: str, key: str, fix: str, *, missing: bool = False) -> None:
        what = "has no integrity MAC" if missing else "does not match its integrity MAC"
        super().__init__(
            f"{table} row {key!r} in the store {what}: it was written outside keyferry "
            f"and is refused; {fix}"
        )
        self.table = table
        self.key = key


class RowSigner:
    """Computes and checks the MACs of role and cluster rows."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def role(self, name: str, spec: dict[str, Any]) -> str:
        return self._mac(["roles", name, spec])

    def cluster(
        self,
        *,
        name: str,
        server: str,
        ca_pem: str,
        issuer: str,
        sealed_credential: bytes,
        jwks: dict[str, Any],
    ) -> str:
        sealed = base64.b64encode(sealed_credential).decode()
        return self._mac(["clusters", name, server, ca_pem, issuer, sealed, jwks])

    def cluster_request(self, row: Any) -> str:
        """A pending registry change (ClusterRequestRow's fields)."""
        sealed = base64.b64encode(row.sealed_credential or b"").decode()
        content = [row.grant_id, row.kind, row.name, row.server, row.ca_pem, row.issuer]
        return self._mac(["cluster_requests", *content, sealed, bool(row.force)])

    def check_cluster_request(self, row: Any) -> None:
        fix = "deny the request (`keyferry access deny ID`) and ask again"
        self._check("cluster_requests", row.grant_id, self.cluster_request(row), row.mac, fix)

    def check_role(self, name: str, spec: dict[str, Any], mac: str | None) -> None:
        self._check("roles", name, self.role(name, spec), mac, ROLE_FIX)

    def check_cluster(self, row: Any) -> None:
        expected = self.cluster(
            name=row.name,
            server=row.server,
            ca_pem=row.ca_pem,
            issuer=row.issuer,
            sealed_credential=row.sealed_credential,
            jwks=row.jwks,
        )
        self._check("clusters", row.name, expected, row.mac, CLUSTER_FIX)

    def _check(self, table: str, key: str, expected: str, mac: str | None, fix: str) -> None:
        if mac is None or not hmac.compare_digest(expected, mac):
            raise RowTampered(table, key, fix, missing=mac is None)

    def _mac(self, content: list[Any]) -> str:
        body = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "RowSigner(key=**********)"


def adopt_unsigned_rows(rows: RowSigner, connection: Connection, before: str | None) -> int:
    """On the start that migrates a store from before ROW_MACS_REVISION (not a new one):
    give every role and cluster row without a MAC its MAC (trust on first use); how many.
    Any other start adopts nothing."""
    if before is None or int(before) >= int(ROW_MACS_REVISION):
        return 0
    adopted = 0
    unsigned_roles = select(RoleRow.name, RoleRow.spec).where(RoleRow.mac.is_(None))
    for name, spec in connection.execute(unsigned_roles).all():
        mac = rows.role(name, spec)
        connection.execute(update(RoleRow).where(RoleRow.name == name).values(mac=mac))
        adopted += 1
    unsigned_clusters = select(
        ClusterRow.name,
        ClusterRow.server,
        ClusterRow.ca_pem,
        ClusterRow.issuer,
        ClusterRow.sealed_credential,
        ClusterRow.jwks,
    ).where(ClusterRow.mac.is_(None))
    for name, server, ca_pem, issuer, sealed, jwks in connection.execute(unsigned_clusters).all():
        mac = rows.cluster(
            name=name,
            server=server,
            ca_pem=ca_pem,
            issuer=issuer,
            sealed_credential=sealed,
            jwks=jwks,
        )
        connection.execute(update(ClusterRow).where(ClusterRow.name == name).values(mac=mac))
        adopted += 1
    return adopted
