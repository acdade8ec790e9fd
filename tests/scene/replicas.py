"""Broker replicas as `keyferry broker serve` processes sharing one PostgreSQL store.

Each replica has its own data folder (its self-signed workload TLS identity), its own
audit copy file and its own ports; they share the store, Vault, the sealing key, the audit
chain (in the store) and the admin CA. The ports are read from what `broker serve` prints.
A replica has many lives: `kill` (SIGKILL) and `restart` on the same config; each life
prints its own ports (port 0: new ones), which `restart` reads from that life's log lines.

Beside it, what the replica tests share: issuing and rotating on a chosen replica, a
sampler of who holds the leader's lock, and `keyferry audit verify` on the shared chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml
from google.protobuf import duration_pb2
from pydantic import SecretStr

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.audit import StoreChainLog
from broker.backends import VaultClient, VaultSettings
from broker.server.tls import GENERATED_DIR
from broker.service.jobs.leadership import LOCK_KEY
from broker.settings import BrokerSettings, load_settings
from broker.store import LeaseRecord, LeaseState, Selector, Store, StoreSettings
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer

from .admin_helpers import SECURITY, admin_channel
from .kube_helpers import BoundToken
from .stores import postgres_database
from .workloads import bearer, broker_stub

KEYFERRY = Path(sys.executable).parent / "keyferry"
START = 60.0  # bound of waiting for a replica to serve; never asserted
PORT_LINE = re.compile(r"keyferry broker: (workload listener|admin listener|metrics) on port (\d+)")
LISTENERS = 3


@dataclass
class Replica:
    name: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    lives: int = 1

    @property
    def settings(self) -> BrokerSettings:
        return load_settings(self.config)

    @property
    def port(self) -> int:
        return self.ports["workload listener"]

    @property
    def ca(self) -> Path:
        return self.settings.data_dir / GENERATED_DIR / "tls.crt"

    def admin_channel(self, operator: str = SECURITY) -> AbstractAsyncContextManager[Any]:
        return admin_channel(self.settings, self.ports["admin listener"], operator)

    def alive(self) -> bool:
        return self.process.poll() is None

    def gauge(self, name: str) -> float | None:
        """A gauge from its /metrics; None when it does not answer (or is starting)."""
        if "metrics" not in self.ports:
            return None
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except (OSError, http.client.HTTPException):  # killed mid-answer: IncompleteRead
            return None
        match = re.search(rf"^{name} ([0-9.e+-]+|nan)$", text, re.MULTILINE)
        return None if match is None else float(match.group(1))

    def leader(self) -> bool | None:
        """What its /metrics says (keyferry_leader); None when it does not answer."""
        value = self.gauge("keyferry_leader")
        return None if value is None else value == 1.0

    def kill(self) -> None:
        """kill -9."""
        self.process.kill()
        self.process.wait(timeout=30)

    async def restart(self) -> None:
        """A new life on the same config (after `kill` or `stop`), serving once it printed
        its ports."""
        assert not self.alive(), f"replica {self.name} is still running"
        self.process, self.ports = _launch(self.config, self.log), {}
        self.lives += 1
        await _serving(self, self.log.stat().st_size if self.log.exists() else 0)

    def stop(self) -> int:
        """SIGTERM and wait: the broker stops gracefully (and signs a checkpoint)."""
        if self.alive():
            self.process.terminate()
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(timeout=30)
        return self.process.returncode


def write_config(folder: Path, name: str, shared: dict[str, Any]) -> Path:
    """The replica's own config: `shared` with its data folder and audit copy."""
    home = folder / name
    home.mkdir(parents=True, exist_ok=True)
    data = {
        **shared,
        "data_dir": str(home / "data"),
        "audit": {**shared["audit"], "log": str(home / "audit-copy.jsonl"), "sink": "store"},
    }
    path = home / "broker.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def start_replica(folder: Path, name: str, shared: dict[str, Any]) -> Replica:
    config = write_config(folder, name, shared)
    log = config.parent / "broker.log"
    offset = log.stat().st_size if log.exists() else 0
    replica = Replica(name, config, log, _launch(config, log))
    await _serving(replica, offset)
    return replica


def _launch(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(KEYFERRY), "broker", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def _serving(replica: Replica, offset: int) -> None:
    """Wait until this life (its log from `offset` on) printed every listener's port."""
    deadline = time.monotonic() + START
    while True:
        with replica.log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        ports = {m.group(1): int(m.group(2)) for m in PORT_LINE.finditer(text)}
        if len(ports) == LISTENERS:
            replica.ports = ports
            return
        if not replica.alive() or time.monotonic() > deadline:
            replica.stop()
            raise AssertionError(f"replica {replica.name} did not start:\n{text[-3000:]}")
        await asyncio.sleep(0.1)


def lock_holders(dsn: str) -> int:
    """How many sessions hold the leader's advisory lock right now (pg_locks)."""
    high, low = LOCK_KEY >> 32, LOCK_KEY & 0xFFFF_FFFF
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
            (high, low),
        ).fetchone()
    assert row is not None
    return int(row[0])


def leader_of(replicas: list[Replica]) -> Replica | None:
    """The one live replica that says it leads; None when none (or several) do."""
    leading = [r for r in replicas if r.alive() and r.leader()]
    return leading[0] if len(leading) == 1 else None


class LeaderWatch:
    """Samples, until stopped, how many sessions hold the leader lock and how many live
    replicas say they lead; keeps the highest of each."""

    def __init__(self, dsn: str, replicas: list[Replica]) -> None:
        self.dsn = dsn
        self.replicas = replicas
        self.most_holders = 0
        self.most_leaders = 0
        self.samples = 0

    async def run(self) -> None:
        while True:
            holders = await asyncio.to_thread(lock_holders, self.dsn)
            says = [await asyncio.to_thread(r.leader) for r in self.replicas if r.alive()]
            self.most_holders = max(self.most_holders, holders)
            self.most_leaders = max(self.most_leaders, sum(1 for s in says if s))
            self.samples += 1
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def watching(watch: LeaderWatch) -> AsyncIterator[LeaderWatch]:
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def issue_on(replica: Replica, token: BoundToken) -> broker_pb2.IssueResponse:
    """Issue as an agent does it: UNAVAILABLE (a busy bed's API server) is retried."""
    request = broker_pb2.IssueRequest(credential_name="orders-db", role="orders-db-ro")
    async with broker_stub(replica.port, replica.ca) as stub:
        for attempt in range(5):
            try:
                response: broker_pb2.IssueResponse = await stub.Issue(
                    request, metadata=bearer(token)
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                    raise
                await asyncio.sleep(1)
            else:
                return response
    raise AssertionError("unreachable")


async def rotate_on(
    replica: Replica, lease_ids: list[str], grace: float
) -> list[rotation_pb2.LeaseRotation]:
    """Rotation.RotateLeases on `replica`."""
    duration = duration_pb2.Duration(seconds=int(grace))
    request = rotation_pb2.RotateLeasesRequest(lease_ids=lease_ids, grace=duration)
    async with replica.admin_channel() as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        reply = await stub.RotateLeases(request)
    return list(reply.rotations)


def pod_leases(store: Store, pod_uid: str, cluster: str = "a") -> list[LeaseRecord]:
    """Every row of one pod, whatever its state."""
    states = frozenset(LeaseState)
    return [
        lease
        for lease in store.leases.list_by_selector(Selector(cluster=cluster, states=states))
        if lease.pod_uid == pod_uid
    ]


def chain_verifies(replica: Replica, store: Store) -> None:
    """`keyferry audit verify` with a replica's config reads the shared chain in the store:
    every record of it, and at least one signed checkpoint."""
    result = subprocess.run(
        [str(KEYFERRY), "audit", "verify", "--config", str(replica.config), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["records"] == len(StoreChainLog(store.audit_chain).lines())
    assert report["checkpoints_verified"] >= 1


# --- fixtures of the replica tests (import them into the test module by name) ----------------


@pytest.fixture
def store_dsn(postgres: PostgresServer) -> Iterator[str]:
    """A database of the test's own on the bed's PostgreSQL: the replicas' store."""
    with postgres_database(postgres) as dsn:
        yield dsn


@pytest.fixture
def store(store_dsn: str) -> Iterator[Store]:
    """The shared store, read by the test as an outside observer."""
    opened = Store.open(StoreSettings(url=SecretStr(store_dsn)))
    yield opened
    opened.close()


@pytest.fixture
def vault_leases(vault: VaultServer) -> Iterator[VaultClient]:
    """Vault as an outside observer (root token)."""
    client = VaultClient(VaultSettings(addr=vault.addr, token=SecretStr(vault.root_token)))
    yield client
    client.close()
