"""The demo's stage: the bed's servers, Vault set up for the broker the way the tests do it
(AppRole with docs/vault-policy.hcl as-is, a database mount, an aws mount on moto, a
transit key), an admin CA
and operator context from `keyferry admin init`, and the broker on its embedded defaults
(SQLite store, generated workload TLS identity) in a thread of this process."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hvac

from tests.bed.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.moto import MotoServer
from tests.bed.ports import free_port
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import MOUNT, POLICY, TRANSIT_KEY, TRANSIT_MOUNT, config
from tests.scene.broker_thread import BrokerThread
from tests.scene.engines import enable, enable_approle, mount_aws, mount_postgres
from tests.scene.stores import sqlite_url

from .say import Narrator

KEYFERRY = Path(sys.executable).with_name("keyferry")
OPERATOR = "demo-operator"
AWS_MOUNT, AWS_ROLE = "keyferry/aws", "orders-app"  # role orders-aws in docs/examples/roles.yaml


@dataclass
class Servers:
    vault: VaultServer
    postgres: PostgresServer
    moto: MotoServer
    clusters: dict[str, KubeCluster]


def keyferry(say: Narrator, *args: str) -> str:
    """Run the keyferry CLI, show the command and its output; fail on a non-zero exit."""
    say.line("$ keyferry " + " ".join(args))
    done = subprocess.run([str(KEYFERRY), *args], capture_output=True, text=True, check=False)
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            say.detail(line)
    if done.returncode != 0:
        raise RuntimeError(
            f"keyferry {args[0]} {args[1] if len(args) > 1 else ''} exited {done.returncode}"
        )
    return done.stdout


def start_servers(bed: Bed, say: Narrator) -> Servers:
    vault = bed.vault()
    say.detail(f"Vault dev server ({vault.flavour}): {vault.addr}")
    postgres = bed.postgres()
    say.detail(f"PostgreSQL: 127.0.0.1:{postgres.port}")
    moto = bed.moto()
    say.detail(f"moto (AWS IAM and STS, key checking on): {moto.endpoint}")
    clusters = {c.name: c for c in bed.clusters(2) if isinstance(c, KubeCluster)}
    if len(clusters) != 2:
        raise RuntimeError(
            "the demo runs on the process provider's clusters (unset KEYFERRY_BED_PROVIDER)"
        )
    for cluster in clusters.values():
        say.detail(f"cluster {cluster.name}: {cluster.describe()}")
    return Servers(vault, postgres, moto, clusters)


def prepare_vault(root: hvac.Client, servers: Servers, say: Narrator) -> tuple[str, str]:
    postgres = servers.postgres
    approle = enable_approle(root, "keyferry-broker", POLICY.read_text(), "keyferry-broker")
    say.detail("AppRole keyferry-broker with docs/vault-policy.hcl")
    mount_postgres(root, postgres, MOUNT, "ro")
    say.detail(f"database engine {MOUNT} (role ro: SELECT-only PostgreSQL users)")
    mount_aws(root, servers.moto, AWS_MOUNT, AWS_ROLE)
    say.detail(f"aws engine {AWS_MOUNT} on moto (role {AWS_ROLE}: an IAM user per lease)")
    enable(root, "transit", TRANSIT_MOUNT)
    root.secrets.transit.create_key(name=TRANSIT_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT)
    say.detail(f"transit key {TRANSIT_MOUNT}/{TRANSIT_KEY} (signs audit checkpoints)")
    return approle


def start_broker(
    folder: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    clusters: dict[str, KubeCluster],
    say: Narrator,
    workload_host: str = "127.0.0.1",
) -> tuple[BrokerThread, Path]:
    """The broker, its workload listener on `workload_host` (the node's address when
    cluster a has a real node: the agents in its pods reach the broker there)."""
    admin_port = free_port()
    context = folder / "context.yaml"
    ca_dir = folder / "admin"
    keyferry(
        say, "admin", "init", "--operator", OPERATOR, "--group", "security",
        "--group", "platform", "--address", f"127.0.0.1:{admin_port}",
        "--dir", str(ca_dir), "--context-file", str(context),
    )  # fmt: skip
    data = config(folder, vault, approle, clusters, sqlite_url(folder))
    shutil.rmtree(folder / "admin-ca")  # config()'s own test CA: this broker uses ca_dir's
    data["audit"]["hmac_key"] = secrets.token_urlsafe(32)
    data["sealing"]["key"] = base64.b64encode(os.urandom(32)).decode()
    data.pop("roles")  # applied below with `keyferry roles apply`, as an operator would
    data["clusters"] = []  # registered below with `keyferry clusters register`
    data["workload"]["host"] = workload_host
    data["admin"] = {
        "host": "127.0.0.1",
        "port": admin_port,
        "tls_cert": str(folder / "broker-admin" / "broker-admin.crt"),  # init's --broker-dir
        "tls_key": str(folder / "broker-admin" / "broker-admin.key"),
        "client_ca": str(folder / "broker-admin" / "ca.crt"),
    }
    broker = BrokerThread(data, folder)
    return broker, context
