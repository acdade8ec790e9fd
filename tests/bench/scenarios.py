"""The bench's scene (a bed, a broker started as the integration tests start it) and the
four measured pairs. Counts are bounded so that the full run stays within ~5 minutes on
the project's 2-core machine."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import hvac
from kubernetes import client as k8s

from tests.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.conftest import KUBE_CLUSTERS
from tests.integration.engines import mount_postgres
from tests.integration.kube_helpers import core, new_namespace
from tests.integration.stores import sqlite_url
from tests.integration.test_issue import (
    MOUNT,
    ROLE,
    config,
    new_approle,
    new_transit,
    start_broker,
)
from tests.integration.test_webhook import INJECT, harnesses, pod_body
from tests.integration.workloads import mint

from .stats import ratio, summarise
from .workloads import (
    Run,
    db_creds_and_revoke,
    direct,
    keyferry_issue_release,
    kv_read,
    rotation_push,
)

KV_ROLE, KV_MOUNT, KV_PATH = "app-config", "keyferry/app-config", "orders/config"  # roles.yaml
KV_POLICY = """@id("bench-kv-issue")
permit (principal is Workload, action == Action::"issue", resource is Role)
when { principal.namespace == "orders" && resource.backend == "kv" };
"""
UNLIMITED = 1_000_000


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    issue_samples: dict[int, int]  # per concurrency, both sides each
    kv_samples: dict[int, int]
    webhook_samples: int
    watchers: int
    rotation_rounds: int


FULL = Plan((1, 8, 64), {1: 60, 8: 240, 64: 640}, {1: 200, 8: 400, 64: 1280}, 200, 8, 8)
QUICK = Plan((1, 4), {1: 4, 4: 8}, {1: 4, 4: 8}, 4, 2, 1)


def run_all(plan: Plan) -> dict[str, Any]:
    bed = Bed()
    try:
        return asyncio.run(_run(bed, plan))
    finally:
        bed.stop()


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


async def _run(bed: Bed, plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    _say("starting the bed: Vault, PostgreSQL, clusters a, b, c")
    vault, postgres = bed.vault(), bed.postgres()
    clusters = {c.name: cast(KubeCluster, c) for c in bed.clusters(KUBE_CLUSTERS)}
    root = vault.client()
    approle = new_approle(root)
    mount_postgres(root, postgres, MOUNT, "ro")
    new_transit(root)
    _mount_kv(root)

    folder = Path(tempfile.mkdtemp(prefix="keyferry-bench-"))
    (folder / "bench-kv.cedar").write_text(KV_POLICY)
    data = config(folder, vault, approle, clusters, sqlite_url(folder))
    data["policies"].append(str(folder / "bench-kv.cedar"))
    data["limits"].update(
        per_pod=8,
        per_cluster=UNLIMITED,
        pod_issue_rate=UNLIMITED,
        pod_issue_burst=UNLIMITED,
        cluster_issue_rate=UNLIMITED,
        cluster_issue_burst=UNLIMITED,
    )
    data["rotation"] = {"grace": "1h", "revoke_interval": "1s"}
    broker = await start_broker(data, folder)
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "versions": _versions(vault, postgres, clusters["a"]),
        "plan": {"quick": plan is QUICK},
    }
    try:
        pods = max(*plan.concurrency, plan.watchers)
        _say(f"minting {pods} pods with bound tokens in cluster a")
        tokens = await asyncio.to_thread(lambda: [mint(clusters["a"]) for _ in range(pods)])
        token = root.token
        figures["issue"] = await _pairs(
            plan,
            plan.issue_samples,
            "database credential",
            lambda c, n: keyferry_issue_release(broker, tokens[:c], n, ROLE, "orders-db"),
            lambda c, n: direct(vault.addr, token, c, n, db_creds_and_revoke(MOUNT, "ro")),
        )
        figures["kv"] = await _pairs(
            plan,
            plan.kv_samples,
            "KV v2 secret",
            lambda c, n: keyferry_issue_release(broker, tokens[:c], n, KV_ROLE, "config"),
            lambda c, n: direct(vault.addr, token, c, n, kv_read(KV_MOUNT, KV_PATH)),
        )
        _say(f"rotation push: {plan.watchers} watchers x {plan.rotation_rounds} rounds")
        push = await rotation_push(
            broker, tokens[: plan.watchers], plan.rotation_rounds, ROLE, "orders-db-watched"
        )
        receipt_to_ack = push.receipt_to_ack
        figures["rotation"] = {
            "watchers": push.agents,
            "rounds": plan.rotation_rounds,
            "sent_to_receipt": summarise(push.sent_to_receipt).as_dict(),
            "reply_to_receipt": summarise(push.reply_to_receipt).as_dict(),
            "receipt_to_ack": summarise(receipt_to_ack).as_dict(),
            "sent_to_ack": summarise(
                [a + b for a, b in zip(push.sent_to_receipt, receipt_to_ack, strict=True)]
            ).as_dict(),
            "reply_to_ack": summarise(
                [a + b for a, b in zip(push.reply_to_receipt, receipt_to_ack, strict=True)]
            ).as_dict(),
            "event_before_reply": sum(1 for r in push.reply_to_receipt if r < 0),
        }
    finally:
        await broker.server.stop(1)
    _say(f"webhook admission: {plan.webhook_samples} pods with and without, cluster a")
    figures["webhook"] = await asyncio.to_thread(
        _webhook, clusters["a"], folder, plan.webhook_samples
    )
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


async def _pairs(
    plan: Plan, samples: dict[int, int], what: str, ours: Any, theirs: Any
) -> list[dict[str, Any]]:
    """At each concurrency: direct, keyferry, direct, keyferry (half the samples each)."""
    rows = []
    for c in plan.concurrency:
        per_worker = max(1, samples[c] // c // 2)
        _say(f"{what}: concurrency {c}, {per_worker * c * 2} samples a side")
        keyferry, hvac_side = Run(), Run()
        for _ in range(2):
            hvac_side.add(await asyncio.to_thread(theirs, c, per_worker))
            keyferry.add(await ours(c, per_worker))
        k, d = summarise(keyferry.total, keyferry.wall), summarise(hvac_side.total, hvac_side.wall)
        k1, d1 = summarise(keyferry.first, keyferry.wall), summarise(hvac_side.first)
        rows.append(
            {
                "concurrency": c,
                "keyferry": k.as_dict(),
                "direct": d.as_dict(),
                "keyferry_first": k1.as_dict(),
                "direct_first": d1.as_dict(),
                "p50_ratio": ratio(k.p50, d.p50),
                "throughput_ratio": ratio(k.rate, d.rate),
                "added_p50_first_ms": k1.p50 - d1.p50,
            }
        )
    return rows


def _webhook(cluster: KubeCluster, folder: Path, samples: int) -> dict[str, Any]:
    """Pod creates through the API server, alternating a namespace the webhook selects and
    one it does not, on one admin connection; and the webhook's own time per review."""
    with harnesses([cluster], folder / "webhook") as running:
        harness = running[cluster.name]
        watched = harness.namespace("bench")
        with cluster.api_client() as api:
            plain = new_namespace(api, "bench-plain")
            v1 = core(api)
            timings: dict[str, list[float]] = {watched: [], plain: []}
            for i in range(samples + 10):
                order = (watched, plain) if i % 2 else (plain, watched)
                for namespace in order:
                    started = time.perf_counter()
                    v1.create_namespaced_pod(
                        namespace, pod_body(annotations=INJECT), _preload_content=False
                    )
                    if i >= 10:  # the first ten of each are warm-up
                        timings[namespace].append(time.perf_counter() - started)
        inside = [a.seconds for a in harness.admissions(watched)]
    with_hook, without = summarise(timings[watched]), summarise(timings[plain])
    return {
        "inside": summarise(inside).as_dict(),
        "with": with_hook.as_dict(),
        "without": without.as_dict(),
        "added_p50_ms": with_hook.p50 - without.p50,
        "p50_ratio": ratio(with_hook.p50, without.p50),
    }


def _mount_kv(root: hvac.Client) -> None:
    if f"{KV_MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(
        KV_PATH, secret={"feature": "on", "color": "blue"}, mount_point=KV_MOUNT
    )


def _machine() -> dict[str, Any]:
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory": memory,
        "shared": True,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _versions(vault: VaultServer, postgres: PostgresServer, cluster: KubeCluster) -> dict[str, str]:
    with cluster.api_client() as api:
        kubernetes = k8s.VersionApi(api).get_code().git_version
    return {
        "vault": vault.flavour,
        "vault_reported": str(vault.client().sys.read_health_status(method="GET").get("version")),
        "postgresql": postgres.version,
        "kubernetes": f"kube-apiserver {kubernetes}",
        "grpcio": version("grpcio"),
        "hvac": version("hvac"),
    }
