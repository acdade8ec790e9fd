"""The bench's scene: a fresh bed, the broker as deployed (`keyferry broker serve` in its
own process, logging at its default level, info), and pods with bound tokens. Shared by the
benchmarks, the profile, the soak and their smoke tests."""

from __future__ import annotations

import asyncio
import copy
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hvac
from kubernetes import client as k8s

from tests.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.conftest import KUBE_CLUSTERS
from tests.scene.broker import MOUNT, config, new_approle, new_transit
from tests.scene.engines import mount_postgres
from tests.scene.kube_helpers import BoundToken, core, pod
from tests.scene.stores import sqlite_url
from tests.scene.workloads import ACCOUNT, ensure_namespace

from .served import BrokerProcess, broker_process

KV_ROLE, KV_MOUNT, KV_PATH = "app-config", "keyferry/app-config", "orders/config"  # roles.yaml
KV_POLICY = """@id("bench-kv-issue")
permit (principal is Workload, action == Action::"issue", resource is Role)
when { principal.namespace == "orders" && resource.backend == "kv" };
"""
UNLIMITED = 1_000_000
TOKEN_SECONDS = 3600  # longer than a full run; the soak mints anew as tokens near their end


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


@dataclass
class Scene:
    bed: Bed
    vault: VaultServer
    postgres: PostgresServer
    clusters: dict[str, KubeCluster]
    root: hvac.Client
    folder: Path
    data: dict[str, Any]
    broker: BrokerProcess
    tokens: dict[str, list[BoundToken]] = field(default_factory=dict)
    lives: int = 1

    async def pods(self, count: int, cluster: str = "a") -> list[BoundToken]:
        """`count` pods with bound tokens in `cluster` (minted once, then reused)."""
        have = self.tokens.setdefault(cluster, [])
        missing = count - len(have)
        if missing > 0:
            target = self.clusters[cluster]
            have += await asyncio.to_thread(mint_many, target, missing)
        return have[:count]

    async def spread(self, count: int) -> list[BoundToken]:
        """`count` pods spread evenly over clusters a, b and c (a first)."""
        names = sorted(self.clusters)
        shares = [
            count // len(names) + (1 if i < count % len(names) else 0) for i in range(len(names))
        ]
        per_cluster = await asyncio.gather(
            *(self.pods(share, name) for name, share in zip(names, shares, strict=True))
        )
        spread: list[BoundToken] = []
        for i in range(max(shares, default=0)):
            spread += [tokens[i] for tokens in per_cluster if i < len(tokens)]
        return spread

    async def restart_broker(self, **changes: Any) -> BrokerProcess:
        """Stop the broker and start it again with `changes` to its config (same store
        unless `changes` names another)."""
        await asyncio.to_thread(self.broker.stop)
        self.data.update(changes)
        self.lives += 1
        self.broker = await asyncio.to_thread(serve, self.data, self.folder, self.lives)
        return self.broker


LOG_LEVEL = "info"  # `keyferry broker serve`'s default: the broker as deployed


def serve(data: dict[str, Any], folder: Path, life: int = 1) -> BrokerProcess:
    """`keyferry broker serve` on the scene's config, its data and log in folder/broker-<life>."""
    return broker_process(copy.deepcopy(data), folder / f"broker-{life}", log_level=LOG_LEVEL)


def mint_many(
    cluster: KubeCluster, count: int, namespace: str = "orders", seconds: int = TOKEN_SECONDS
) -> list[BoundToken]:
    """`count` pods and a token bound to each, on one API connection (mint() opens one per
    pod, which dominates at a thousand pods)."""
    audience = f"keyferry:{cluster.name}"
    minted = []
    with cluster.api_client() as api:
        ensure_namespace(api, namespace)
        v1 = core(api)
        for _ in range(count):
            name = f"bench-{secrets.token_hex(5)}"
            created = v1.create_namespaced_pod(namespace, pod(name, ACCOUNT))
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(
                    audiences=[audience],
                    expiration_seconds=seconds,
                    bound_object_ref=k8s.V1BoundObjectReference(
                        kind="Pod", api_version="v1", name=name, uid=created.metadata.uid
                    ),
                )
            )
            token = v1.create_namespaced_service_account_token(ACCOUNT, namespace, request)
            minted.append(
                BoundToken(
                    cluster.name,
                    namespace,
                    ACCOUNT,
                    name,
                    created.metadata.uid,
                    audience,
                    token.status.token,
                )
            )
    return minted


def bench_config(
    folder: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    clusters: dict[str, KubeCluster],
    store_url: str,
) -> dict[str, Any]:
    """The integration tests' broker config without per-pod rate limits and caps (the
    bench is one tenant hammering on purpose), and a short revocation interval."""
    (folder / "bench-kv.cedar").write_text(KV_POLICY)
    data = config(folder, vault, approle, clusters, store_url)
    data["policies"].append(str(folder / "bench-kv.cedar"))
    data["limits"].update(
        per_pod=8,
        per_cluster=UNLIMITED,
        pod_issue_rate=UNLIMITED,
        pod_issue_burst=UNLIMITED,
        cluster_issue_rate=UNLIMITED,
        cluster_issue_burst=UNLIMITED,
        pod_lease_call_rate=UNLIMITED,
        pod_lease_call_burst=UNLIMITED,
        # 10,000 streams over 1,000 pods: ten per pod (the default cap is 4); the replica's
        # own cap (replica_watch_streams, 20,000) stays the default.
        pod_watch_streams=UNLIMITED,
    )
    data["rotation"] = {"grace": "1h", "resume_interval": "1s"}
    data["revocation"] = {"interval": "1s"}
    return data


@asynccontextmanager
async def scene(bed: Bed | None = None) -> AsyncIterator[Scene]:
    """Vault with the database, KV and transit mounts, PostgreSQL, clusters a, b and c, and
    a broker process on a SQLite store."""
    own = bed is None
    bed = bed or Bed()
    try:
        say("starting the bed: Vault, PostgreSQL, clusters a, b, c")
        vault, postgres = bed.vault(), bed.postgres()
        clusters = {c.name: cast(KubeCluster, c) for c in bed.clusters(KUBE_CLUSTERS)}
        root = vault.client()
        approle = new_approle(root)
        mount_postgres(root, postgres, MOUNT, "ro")
        new_transit(root)
        mount_kv(root)
        folder = Path(tempfile.mkdtemp(prefix="keyferry-bench-"))
        data = bench_config(folder, vault, approle, clusters, sqlite_url(folder))
        broker = await asyncio.to_thread(serve, data, folder)
        running = Scene(bed, vault, postgres, clusters, root, folder, data, broker)
        try:
            yield running
        finally:
            await asyncio.to_thread(running.broker.stop)
            if not own:  # a shared bed: revoke what is left, as the tests' fixtures do
                root.sys.disable_secrets_engine(MOUNT)
    finally:
        if own:
            bed.stop()


def mount_kv(root: hvac.Client) -> None:
    if f"{KV_MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(
        KV_PATH, secret={"feature": "on", "color": "blue"}, mount_point=KV_MOUNT
    )
