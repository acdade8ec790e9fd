"""The plan of a run and every measurement in order, on one scene (scene.py). Counts are
bounded so that the full run stays within about 20 minutes on the project's 2-core machine."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import hvac
from kubernetes import client as k8s

from tests.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import MOUNT, ROLE
from tests.scene.kube_helpers import BoundToken, core, new_namespace
from tests.scene.stores import postgres_database
from tests.scene.webhook_harness import INJECT, harnesses, pod_body

from .footprint import agents_footprint, broker_with_streams
from .load import LoadPool, processes_for
from .rotations import fleet_rotation, kv_fanout
from .scene import KV_MOUNT, KV_PATH, KV_ROLE, Scene, say, scene
from .served import load_average
from .stats import ratio, summarise
from .store_scale import store_scale
from .workloads import PushRun, Run, db_creds, direct, rotation_push


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    issue_samples: dict[int, int]  # per concurrency, both sides each
    kv_samples: dict[int, int]
    webhook_samples: int
    watchers: int
    rotation_rounds: int
    fanout: tuple[int, ...]  # watchers over clusters a, b, c
    fleet_pods: int
    fleet_concurrency: tuple[int, ...]
    fleet_rounds: int
    agents: int  # real agent processes
    streams: tuple[int, ...]  # idle Watch streams on a broker process, in steps
    stream_pods: int  # distinct pods behind those streams
    store_rows: tuple[int, ...]
    store_samples: int
    windows: float = 1.0  # scales the footprint's settling and CPU windows (5 s idle at 1.0)


FULL = Plan(
    concurrency=(1, 8, 64),
    issue_samples={1: 30, 8: 120, 64: 256},
    kv_samples={1: 60, 8: 160, 64: 384},
    webhook_samples=100,
    watchers=8,
    rotation_rounds=5,
    fanout=(10, 100, 1000),
    fleet_pods=32,
    fleet_concurrency=(1, 8, 32),
    fleet_rounds=2,
    agents=10,
    streams=(1000, 2500, 5000, 10000),
    stream_pods=1000,
    store_rows=(10_000, 30_000, 100_000),
    store_samples=50,
)
QUICK = Plan(
    concurrency=(1, 4),
    issue_samples={1: 4, 4: 8},
    kv_samples={1: 4, 4: 8},
    webhook_samples=4,
    watchers=2,
    rotation_rounds=1,
    fanout=(3, 6),
    fleet_pods=4,
    fleet_concurrency=(1, 2),
    fleet_rounds=1,
    agents=2,
    streams=(4, 8),
    stream_pods=4,
    store_rows=(200, 400),
    store_samples=5,
    windows=0.2,
)


def run_all(plan: Plan) -> dict[str, Any]:
    return asyncio.run(_run(plan))


async def _run(plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    async with scene() as running:
        figures: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(),
            "versions": _versions(running.vault, running.postgres, running.clusters["a"]),
            "plan": {"quick": plan is QUICK, **asdict(plan)},
        }
        await measure(running, plan, figures)
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


async def measure(running: Scene, plan: Plan, figures: dict[str, Any]) -> None:
    """Every measurement, in order, into `figures` (the smoke test calls this too)."""
    tokens = await measure_pairs(running, plan, figures)
    await measure_rest(running, plan, figures, tokens)


async def measure_pairs(running: Scene, plan: Plan, figures: dict[str, Any]) -> list[BoundToken]:
    """The Issue→Release pairs (database, KV, database on a PostgreSQL store); the pods used."""
    vault = running.vault
    pods = max(*plan.concurrency, plan.watchers)
    say(f"minting {pods} pods with bound tokens in cluster a")
    tokens = await running.pods(pods)
    token = running.root.token
    figures["issue"] = await _pairs(
        running,
        plan,
        plan.issue_samples,
        "database credential",
        lambda pool, c, n: pool.keyferry(tokens[:c], n, ROLE, "orders-db"),
        lambda pool, c, n: pool.direct(vault.addr, token, c, n, "db_creds_and_revoke", MOUNT, "ro"),
    )
    figures["kv"] = await _pairs(
        running,
        plan,
        plan.kv_samples,
        "KV v2 secret",
        lambda pool, c, n: pool.keyferry(tokens[:c], n, KV_ROLE, "config"),
        lambda pool, c, n: pool.direct(vault.addr, token, c, n, "kv_read", KV_MOUNT, KV_PATH),
    )
    figures["issue_postgres_store"] = await _on_postgres_store(running, plan, tokens)
    return tokens


async def measure_rest(
    running: Scene, plan: Plan, figures: dict[str, Any], tokens: list[BoundToken]
) -> None:
    """Every measurement after the pairs: rotation, footprint, webhook, store."""
    say(f"rotation push: {plan.watchers} watchers x {plan.rotation_rounds} rounds")
    load = load_average()
    push = await rotation_push(
        running.broker, tokens[: plan.watchers], plan.rotation_rounds, ROLE, "orders-db-watched"
    )
    figures["rotation"] = _push_figures(push, plan.rotation_rounds)
    figures.setdefault("load", {})["rotation"] = {"before": load, "after": load_average()}
    await _phase(figures, "fanout", _fanouts(running, plan))
    await _phase(figures, "fleet", _fleet(running, plan))
    say(f"footprint: {plan.agents} agent processes over clusters a, b, c")
    await _phase(figures, "agents", _agents(running, plan))
    say(f"footprint: a broker process with up to {max(plan.streams)} idle Watch streams")
    await _phase(figures, "streams", _streams(running, plan))
    say(f"webhook admission: {plan.webhook_samples} pods with and without, cluster a")
    await _phase(
        figures,
        "webhook",
        asyncio.to_thread(_webhook, running.clusters["a"], running.folder, plan.webhook_samples),
    )
    say(f"store scale: {', '.join(map(str, plan.store_rows))} leases, SQLite and PostgreSQL")
    await _phase(
        figures,
        "store",
        asyncio.to_thread(
            store_scale, running.folder, running.postgres, plan.store_rows, plan.store_samples
        ),
    )


SECTIONS = ("store", "pairs", "agents")


def run_section(name: str, plan: Plan) -> dict[str, Any]:
    """One section measured again on its own servers (`python -m tests.bench --only`): its
    figures, and when they were taken (`remeasured`). `pairs` is sections 1 and 2 (the
    Issue→Release pairs with the broker's CPU per call): what a change to the hot path is
    measured with before and after."""
    if name not in SECTIONS:
        raise ValueError(f"--only {name}: only {', '.join(SECTIONS)} can be measured on their own")
    if name == "pairs":
        return asyncio.run(_pairs_only(plan))
    if name == "agents":
        return asyncio.run(_agents_only(plan))
    bed = Bed()
    try:
        with tempfile.TemporaryDirectory(prefix="keyferry-bench-") as folder:
            say(
                f"store scale: {', '.join(map(str, plan.store_rows))} leases, SQLite and PostgreSQL"
            )
            store = store_scale(Path(folder), bed.postgres(), plan.store_rows, plan.store_samples)
    finally:
        bed.stop()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {"store": store, "remeasured": {"store": when}}


async def _pairs_only(plan: Plan) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with scene() as running:
        await measure_pairs(running, plan, figures)
    figures["remeasured"] = {"pairs": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    return figures


async def _agents_only(plan: Plan) -> dict[str, Any]:
    """Section 5's agent processes alone (an agent change measured before and after)."""
    figures: dict[str, Any] = {}
    async with scene() as running:
        say(f"footprint: {plan.agents} agent processes over clusters a, b, c")
        await _phase(figures, "agents", _agents(running, plan))
    figures["remeasured"] = {"agents": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    return figures


async def _phase(figures: dict[str, Any], key: str, measurement: Awaitable[Any]) -> None:
    """One later measurement; if it fails, the run goes on and the page says which failed
    and why (`{"error": ...}` in place of its figures). The machine's load average before
    and after goes to figures["load"][key]."""
    before = load_average()
    try:
        figures[key] = await measurement
    except Exception as exc:
        say(f"{key} failed: {exc!r}")
        figures[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    figures.setdefault("load", {})[key] = {"before": before, "after": load_average()}


async def _fanouts(running: Scene, plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for watchers in plan.fanout:
        say(f"KV fan-out: minting pods, then a new version to {watchers} watchers")
        spread = await running.spread(watchers)
        fan = await kv_fanout(
            running.broker,
            running.root,
            spread,
            role=KV_ROLE,
            credential="config",
            mount=KV_MOUNT,
            path=KV_PATH,
        )
        rows.append(
            {
                "watchers": fan.watchers,
                "clusters": fan.clusters,
                "rotate_calls": fan.calls,
                "version_to_ack": summarise(fan.to_ack).as_dict(),
                "last_ack_ms": max(fan.to_ack) * 1000,
                "reply_to_ack": summarise(fan.reply_to_ack).as_dict(),
            }
        )
    return rows


async def _agents(running: Scene, plan: Plan) -> dict[str, Any]:
    return await agents_footprint(running, await running.spread(plan.agents), plan.windows)


async def _streams(running: Scene, plan: Plan) -> dict[str, Any]:
    return await broker_with_streams(
        running, await running.spread(plan.stream_pods), plan.streams, plan.windows
    )


async def _on_postgres_store(
    running: Scene, plan: Plan, tokens: list[BoundToken]
) -> list[dict[str, Any]]:
    """The database Issue pair again at the highest concurrency, with the broker's lease
    store on the bed's PostgreSQL instead of SQLite (what several replicas use)."""
    sqlite_store = dict(running.data["store"])
    top = plan.concurrency[-1]
    vault, token = running.vault, running.root.token
    with postgres_database(running.postgres) as url:
        await running.restart_broker(store={"url": url, "pool_size": 8})
        try:
            rows = await _pairs(
                running,
                replace(plan, concurrency=(top,)),
                plan.issue_samples,
                "database credential, PostgreSQL store",
                lambda pool, c, n: pool.keyferry(tokens[:c], n, ROLE, "orders-db"),
                lambda pool, c, n: pool.direct(
                    vault.addr, token, c, n, "db_creds_and_revoke", MOUNT, "ro"
                ),
            )
        finally:
            await running.restart_broker(store=sqlite_store)
    return rows


def _push_figures(push: PushRun, rounds: int) -> dict[str, Any]:
    receipt_to_ack = push.receipt_to_ack
    return {
        "watchers": push.agents,
        "rounds": rounds,
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


async def _fleet(running: Scene, plan: Plan) -> list[dict[str, Any]]:
    """Rotating database leases through keyferry against making the same number of
    credentials directly, at each concurrency."""
    pods = await running.pods(plan.fleet_pods, "b")
    token = running.root.token
    rows = []
    for c in plan.fleet_concurrency:
        say(f"fleet rotation: {plan.fleet_pods} leases x {plan.fleet_rounds}, concurrency {c}")
        issued: list[str] = []
        per_worker = max(1, plan.fleet_pods * plan.fleet_rounds // c)
        theirs = await asyncio.to_thread(
            direct, running.vault.addr, token, c, per_worker, db_creds(MOUNT, "ro", issued)
        )
        ours = await fleet_rotation(
            running.broker, pods, c, plan.fleet_rounds, role=ROLE, credential=f"fleet-{c}"
        )
        await asyncio.to_thread(_revoke_all, running.root, issued)
        k, d = summarise(ours.total, ours.wall), summarise(theirs.total, theirs.wall)
        rows.append(
            {
                "concurrency": c,
                "keyferry": k.as_dict(),
                "direct": d.as_dict(),
                "throughput_ratio": ratio(k.rate, d.rate),
            }
        )
    return rows


def _revoke_all(root: hvac.Client, lease_ids: list[str]) -> None:
    for lease_id in lease_ids:
        root.sys.revoke_lease(lease_id)


Side = Callable[[LoadPool, int, int], Awaitable[Run]]


async def _pairs(
    running: Scene, plan: Plan, samples: dict[int, int], what: str, ours: Side, theirs: Side
) -> list[dict[str, Any]]:
    """At each concurrency, from the same load processes: direct, keyferry, direct, keyferry
    (half the samples each); the broker process's CPU time over each half, and the machine's
    load average before and after."""
    rows = []
    for c in plan.concurrency:
        per_worker = max(1, samples[c] // c // 2)
        processes = processes_for(c)
        say(f"{what}: concurrency {c}, {per_worker * c * 2} samples a side, {processes} load")
        keyferry, hvac_side = Run(), Run()
        before = load_average()
        async with LoadPool(processes, running.broker) as pool:
            for _ in range(2):
                hvac_side.add(await theirs(pool, c, per_worker))
                keyferry.add(await ours(pool, c, per_worker))
        after = load_average()
        k, d = summarise(keyferry.total, keyferry.wall), summarise(hvac_side.total, hvac_side.wall)
        k1, d1 = summarise(keyferry.first, keyferry.wall), summarise(hvac_side.first)
        idle_share = hvac_side.broker_cpu / hvac_side.wall if hvac_side.wall else 0.0
        rows.append(
            {
                "concurrency": c,
                "load_processes": processes,
                "keyferry": k.as_dict(),
                "direct": d.as_dict(),
                "keyferry_first": k1.as_dict(),
                "direct_first": d1.as_dict(),
                "p50_ratio": ratio(k.p50, d.p50),
                "throughput_ratio": ratio(k.rate, d.rate),
                "added_p50_first_ms": k1.p50 - d1.p50,
                "keyferry_unavailable": keyferry.errors,
                # ms of the broker process's CPU (user + system, all threads) per
                # Issue→Release, and its share of a core while only the direct side ran
                "broker_cpu_ms_per_call": 1000 * keyferry.broker_cpu / len(keyferry.total),
                "broker_cpu_share_busy": keyferry.broker_cpu / keyferry.wall,
                "broker_cpu_share_direct": idle_share,
                "load_before": before,
                "load_after": after,
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
