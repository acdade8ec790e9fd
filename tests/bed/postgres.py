"""The bed's own PostgreSQL instance (Debian's binaries, a temporary data folder, a free port).

initdb and postgres refuse to run as root, so as root the bed runs them as the
`postgres` user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .errors import ServerUnavailable
from .nodenet import NodeNetwork
from .ports import LOOPBACK, free_port
from .process import ManagedProcess, run
from .readiness import Runner
from .workspace import Workspace

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
# Settings of a throw-away server: durability buys nothing here, Vault pools many connections.
SETTINGS = ("fsync=off", "max_connections=300", "synchronous_commit=off", "full_page_writes=off")


@dataclass
class PostgresServer:
    port: int
    password: str
    version: str
    process: Runner  # a local process or a container (see readiness.py)

    def dsn(
        self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres"
    ) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{user}:{pw}@{LOOPBACK}:{self.port}/{dbname}"

    def connect(self, user: str = SUPERUSER, password: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.dsn(user, password), connect_timeout=5, autocommit=True)

    def healthy(self) -> bool:
        with self.connect() as conn:
            return conn.execute("select 1").fetchone() == (1,)

    def describe(self) -> str:
        return f"{self.dsn()} (PostgreSQL {self.version})"

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for pooled clients (Vault's).
        self.process.stop(sig=signal.SIGINT)


def postgres_bin() -> Path:
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin/postgres")), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise ServerUnavailable(
            "PostgreSQL",
            f"no server binaries under {PG_ROOT}",
            "apt-get install postgresql (tests/run does this)",
        )
    return versions[-1].parent


def server_args(port: int, also_on: str | None = None) -> list[str]:
    """`postgres` arguments shared by both providers: the port, loopback (and `also_on`,
    the node network's address), SETTINGS."""
    settings = [arg for setting in SETTINGS for arg in ("-c", setting)]
    addresses = ",".join([LOOPBACK, *([also_on] if also_on else [])])
    return ["-p", str(port), "-c", f"listen_addresses={addresses}", *settings]


def start_postgres(
    ws: Workspace, network: NodeNetwork | None = None, name: str = "postgres"
) -> PostgresServer:
    bindir = postgres_bin()
    user = SUPERUSER if os.geteuid() == 0 else None
    home = ws.folder(name, owner=user)
    password = secrets.token_urlsafe(18)
    pwfile = home / "pwfile"
    pwfile.write_text(password)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    data = home / "data"
    run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        user=user,
        cwd=home,
    )
    pwfile.unlink()
    if network:  # the node's pods log in from their own addresses
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {network.pod_cidr} scram-sha-256\n")
    port = free_port()
    also_on = network.address if network else None
    process = ManagedProcess(
        name,
        [str(bindir / "postgres"), "-D", str(data), "-k", str(home), *server_args(port, also_on)],
        ws.log(name),
        user=user,
        cwd=home,
    )
    server = PostgresServer(port, password, bindir.parent.name, process)
    process.start()
    process.wait_until(server.healthy, "accepting connections")
    return server
