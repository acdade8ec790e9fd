"""Broker replicas as `keyferry broker serve` processes sharing one PostgreSQL store.

Each replica has its own data folder (its self-signed workload TLS identity), its own
audit copy file and its own ports; they share the store, Vault, the sealing key, the audit
chain (in the store) and the admin CA. The ports are read from what `broker serve` prints.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from broker.server.tls import GENERATED_DIR
from broker.service.leadership import LOCK_KEY
from broker.settings import BrokerSettings, load_settings

from .admin_helpers import SECURITY, admin_channel

KEYFERRY = Path(sys.executable).parent / "keyferry"
START = 60.0  # bound of waiting for a replica to serve; never asserted
PORT_LINE = re.compile(r"keyferry broker: (workload listener|admin listener|metrics) on port (\d+)")


@dataclass
class Replica:
    name: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

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
        """A gauge from its /metrics; None when it does not answer."""
        url = f"http://127.0.0.1:{self.ports['metrics']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
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
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(KEYFERRY), "broker", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    replica = Replica(name, config, log, process)
    deadline = time.monotonic() + START
    while len(replica.ports) < 3:
        if not replica.alive() or time.monotonic() > deadline:
            replica.stop()
            raise AssertionError(f"replica {name} did not start:\n{log.read_text()[-3000:]}")
        replica.ports = {m.group(1): int(m.group(2)) for m in PORT_LINE.finditer(log.read_text())}
        await asyncio.sleep(0.1)
    return replica


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
