"""Sample values several unit test modules build on (test modules never import each other)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import SecretStr

from broker.models import Credential, VaultLease
from broker.service import LeaseRotated
from broker.store import LeaseRecord, LeaseState
from injector.agent.client import Issued
from injector.agent.spec import AgentSpec, CredentialRequest
from injector.terms import Mode, Signal

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# A webhook config file with a serving port to fill in (`.format(port=...)`).
WEBHOOK_CONFIG_YAML = """\
cluster_name: east
namespace: keyferry-system
agent:
  image: keyferry/agent:test
broker:
  address: broker.keyferry.svc:8443
  ca_file: broker-ca.pem
server:
  host: 127.0.0.1
  port: {port}
  cert_file: tls.crt
  key_file: tls.key
"""


def lease_record(generation: int = 2) -> LeaseRecord:
    """An active lease of pod app-1 (uid-1) in cluster a, generation `generation`."""
    return LeaseRecord(
        id=f"lease-{generation}",
        vault_lease_id="keyferry/db/creds/ro/abc",
        state=LeaseState.ACTIVE,
        cluster="a",
        namespace="orders",
        service_account="workload",
        pod_name="app-1",
        pod_uid="uid-1",
        credential="orders-db",
        role="orders-db-ro",
        generation=generation,
        expires_at=NOW + timedelta(minutes=5),
        revoke_after=None,
        created_at=NOW,
        updated_at=NOW,
        last_error=None,
        revoke_attempts=0,
    )


def rotated_event() -> LeaseRotated:
    """The hub's event for lease_record() rotated to a new database login."""
    vault_lease = VaultLease(
        role="orders-db-ro",
        kind="database",
        mount="keyferry/db",
        lease_id="keyferry/db/creds/ro/abc",
        renewable=True,
        ttl=timedelta(minutes=5),
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )
    credential = Credential(values={"username": SecretStr("u"), "password": SecretStr("p")})
    return LeaseRotated(lease_record(), credential, vault_lease)


def issued(generation: int, password: str, lease: str = "") -> Issued:
    """What the broker answers for credential `db`, generation `generation`."""
    return Issued(
        lease_id=lease or f"lease-{generation}",
        credential_name="db",
        generation=generation,
        expires_at=None,
        values={"username": "u", "password": password},
    )


def signal_spec(tmp_path: Path) -> AgentSpec:
    """An agent spec for one database credential, signalling the app with SIGHUP."""
    return AgentSpec(
        mode=Mode.SIDECAR,
        cluster="a",
        broker_address="127.0.0.1:1",
        directory=str(tmp_path),
        token_path=str(tmp_path / "token"),
        credentials=(CredentialRequest(name="db", role="orders-db-ro"),),
        on_rotate=Signal.SIGHUP,
    )
