"""The bed's own MariaDB instance (Debian's binaries, a temporary data folder, a free port)."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pymysql

from .errors import ServerUnavailable
from .nodenet import NodeNetwork
from .ports import LOOPBACK, free_port
from .process import ManagedProcess, run
from .readiness import Runner
from .workspace import Workspace

ADMIN = "keyferry_admin"
# mariadbd options of a throw-away server, shared by both providers.
TUNING = (
    "--skip-log-bin",
    "--innodb-buffer-pool-size=64M",
    "--max-connections=300",
    "--innodb-flush-log-at-trx-commit=0",
)


@dataclass
class MariaDBServer:
    port: int
    socket: Path | None  # None when the server runs in a container
    admin_password: str
    version: str
    process: Runner  # a local process or a container (see readiness.py)

    def connect(self, user: str = ADMIN, password: str | None = None) -> pymysql.Connection:
        pw = self.admin_password if password is None else password
        return pymysql.connect(
            host=LOOPBACK,
            port=self.port,
            user=user,
            password=pw,
            connect_timeout=5,
            autocommit=True,
        )

    def healthy(self) -> bool:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("select 1")
            return bool(cur.fetchone() == (1,))

    def describe(self) -> str:
        return (
            f"mysql://{ADMIN}:{self.admin_password}@{LOOPBACK}:{self.port}/ "
            f"(MariaDB {self.version})"
        )

    def stop(self) -> None:
        self.process.stop()


def _binary(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if not path:
        raise ServerUnavailable(
            "MariaDB",
            f"`{name}` is not installed",
            "apt-get install mariadb-server (tests/run does this)",
        )
    return path


def server_args(port: int, also_on: str | None = None) -> list[str]:
    """`mariadbd` options shared by both providers: the port, loopback (and `also_on`, the
    node network's address: MariaDB 10.11 takes a list), TUNING. The bed's users are
    '%' users, so the node's pods log in from their own addresses."""
    addresses = ",".join([LOOPBACK, *([also_on] if also_on else [])])
    return [f"--port={port}", f"--bind-address={addresses}", *TUNING]


def create_mariadb_admin(root: pymysql.Connection, password: str) -> str:
    """Create the bed's admin user (ADMIN, all privileges) as root; return the server version."""
    with root, root.cursor() as cur:
        cur.execute(f"CREATE USER IF NOT EXISTS '{ADMIN}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'%' WITH GRANT OPTION")
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
    return str(row[0]) if row else "unknown"


def start_mariadb(
    ws: Workspace, network: NodeNetwork | None = None, name: str = "mariadb"
) -> MariaDBServer:
    mariadbd = _binary("mariadbd")
    install_db = _binary("mariadb-install-db")
    home = ws.folder(name)
    data, sock = home / "data", home / "mysqld.sock"
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    run(
        [
            install_db,
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *as_root,
        ],
        cwd=home,
        timeout=180,
    )
    port = free_port()
    process = ManagedProcess(
        name,
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            *server_args(port, network.address if network else None),
            f"--socket={sock}",
            f"--pid-file={home / 'mysqld.pid'}",
            *as_root,
        ],
        ws.log(name),
        cwd=home,
    )
    process.start()
    password = secrets.token_urlsafe(18)

    def bootstrap() -> bool:
        conn = pymysql.connect(
            unix_socket=str(sock), user="root", password="", connect_timeout=2, autocommit=True
        )
        server.version = create_mariadb_admin(conn, password)
        return True

    server = MariaDBServer(port, sock, password, "unknown", process)
    process.wait_until(bootstrap, "accepting connections on its socket")
    process.wait_until(server.healthy, "accepting TCP logins")
    return server
