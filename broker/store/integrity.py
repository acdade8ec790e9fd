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
with a wrong MAC.

MAC format: `<key id>:<first 55 hex digits of the HMAC>` (64 characters, the column's
width), made under the ring's current key; a row made by a key not in the ring is refused
with RowKeyMissing (add the key back, or `keyferry admin reseal` while it is there). MACs
written before key ids (64 hex digits) are checked against every key of the ring.

A store opened without the key (`keyferry audit verify`, tests' observers) neither writes
nor checks MACs: a row it writes is refused by the broker until re-applied.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from sqlalchemy import Connection, select, update

from broker.errors import FailedPrecondition

from .keyring import KeyMissing, KeyRing, RingKey
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


KEY_FIX = (
    "put the key back in sealing.keys (after the current one), or run `keyferry admin "
    "reseal --config FILE` with a ring that holds it before removing it"
)
MAC_HEX = 55  # hex digits of the HMAC kept after `<key id>:` (64 characters in all)


class RowKeyMissing(RowTampered):
    """A row's MAC was made by a sealing key that is no longer in the ring."""

    audit_reason = "ROW_KEY_MISSING"

    def __init__(self, table: str, key: str, kid: str) -> None:
        FailedPrecondition.__init__(
            self,
            f"{table} row {key!r} in the store was MAC'd under sealing key {kid}, which is "
            f"not in sealing.keys; {KEY_FIX}",
        )
        self.table = table
        self.key = key
        self.kid = kid


def mac_key_id(mac: str | None) -> str | None:
    """The key id a MAC names; None for a MAC written before key ids (or none)."""
    if mac is None or ":" not in mac:
        return None
    return mac.split(":", 1)[0]


class RowSigner:
    """Computes and checks the MACs of role and cluster rows, under the rows key ring
    (`KeyRing.derive("rows")`) or one raw key."""

    def __init__(self, keys: KeyRing | bytes) -> None:
        self._ring = KeyRing.coerce(keys)

    @property
    def current(self) -> str:
        """The id of the key new MACs are made under."""
        return self._ring.current.name

    def is_current(self, mac: str | None) -> bool:
        return mac_key_id(mac) == self.current

    def role(self, name: str, spec: dict[str, Any]) -> str:
        return self._mac(_role(name, spec))

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
        return self._mac(_cluster(name, server, ca_pem, issuer, sealed_credential, jwks))

    def cluster_request(self, row: Any) -> str:
        """A pending registry change (ClusterRequestRow's fields)."""
        return self._mac(_cluster_request(row))

    def check_cluster_request(self, row: Any) -> None:
        fix = "deny the request (`keyferry access deny ID`) and ask again"
        self._check("cluster_requests", row.grant_id, _cluster_request(row), row.mac, fix)

    def check_role(self, name: str, spec: dict[str, Any], mac: str | None) -> None:
        self._check("roles", name, _role(name, spec), mac, ROLE_FIX)

    def check_cluster(self, row: Any) -> None:
        content = _cluster(
            row.name, row.server, row.ca_pem, row.issuer, row.sealed_credential, row.jwks
        )
        self._check("clusters", row.name, content, row.mac, CLUSTER_FIX)

    def _check(self, table: str, key: str, content: list[Any], mac: str | None, fix: str) -> None:
        """RowTampered unless `mac` is the content's MAC under a key of the ring (the one
        it names, or any for a MAC from before key ids); RowKeyMissing when it names a key
        the ring does not hold."""
        if mac is None:
            raise RowTampered(table, key, fix, missing=True)
        kid = mac_key_id(mac)
        if kid is None:  # before key ids: the whole HMAC, under any key of the ring
            for ring_key in self._ring:
                if hmac.compare_digest(self._hmac(ring_key.secret, content), mac):
                    return
            raise RowTampered(table, key, fix)
        try:
            ring_key = self._ring.get(bytes.fromhex(kid))
        except (KeyMissing, ValueError):
            raise RowKeyMissing(table, key, kid) from None
        if not hmac.compare_digest(self._tagged(ring_key, content), mac):
            raise RowTampered(table, key, fix)

    def _mac(self, content: list[Any]) -> str:
        return self._tagged(self._ring.current, content)

    def _tagged(self, ring_key: RingKey, content: list[Any]) -> str:
        return f"{ring_key.name}:{self._hmac(ring_key.secret, content)[:MAC_HEX]}"

    @staticmethod
    def _hmac(secret: bytes, content: list[Any]) -> str:
        body = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"RowSigner(keys={self._ring.names})"


def _role(name: str, spec: dict[str, Any]) -> list[Any]:
    return ["roles", name, spec]


def _cluster(  # noqa: PLR0917 (the row's covered fields, in order)
    name: str, server: str, ca_pem: str, issuer: str, sealed: bytes, jwks: dict[str, Any]
) -> list[Any]:
    return ["clusters", name, server, ca_pem, issuer, base64.b64encode(sealed).decode(), jwks]


def _cluster_request(row: Any) -> list[Any]:
    sealed = base64.b64encode(row.sealed_credential or b"").decode()
    content = [row.grant_id, row.kind, row.name, row.server, row.ca_pem, row.issuer]
    return ["cluster_requests", *content, sealed, bool(row.force)]


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
