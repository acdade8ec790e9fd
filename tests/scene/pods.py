"""Pods through the real API server, for the e2e tests and the demo: create one, read back
its mutated (stored) form, prepare it for the kubelet harness, wait for its agent, and look
at what the broker holds for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from broker.store import LeaseState, Selector
from tests.bed.kube import KubeCluster
from tests.scene.kube_helpers import core, eventually

from .broker_thread import BrokerThread
from .kubelet import PodRunner

AGENT = "keyferry-agent"


def create(cluster: KubeCluster, body: dict[str, Any], namespace: str = "orders") -> dict[str, Any]:
    with cluster.api_client() as api:
        raw = core(api).create_namespaced_pod(namespace, body, _preload_content=False)
        created: dict[str, Any] = json.loads(raw.data)
    return created


def read(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    with cluster.api_client() as api:
        raw = core(api).read_namespaced_pod(name, namespace, _preload_content=False)
        stored: dict[str, Any] = json.loads(raw.data)
    return stored


def mutated(stored: dict[str, Any]) -> bool:
    return any(c["name"] == AGENT for c in stored["spec"].get("initContainers") or [])


def runner_for(
    cluster: KubeCluster, stored: dict[str, Any], tmp_path: Path, runners: list[PodRunner]
) -> PodRunner:
    """Read the pod back from the API server (the mutated, stored form) and prepare it."""
    pod = read(cluster, stored["metadata"]["namespace"], stored["metadata"]["name"])
    assert mutated(pod), "the webhook did not mutate the pod"
    folder = tmp_path / pod["metadata"]["name"]
    folder.mkdir()
    runner = PodRunner(cluster, pod, folder)
    runners.append(runner)
    runner.prepare_volumes()
    return runner


def until_ready(runner: PodRunner, agent: Any, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if agent.poll() is not None:
            raise AssertionError(f"agent exited {agent.returncode}: {agent.stderr.read().decode()}")
        return runner.probe(AGENT) == 0

    eventually(ready, "the agent's startupProbe passing", timeout)


def log_lines(process: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.stderr.read().decode().splitlines() if line]


def dsn_values(text: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    return {k: str(v) for k, v in conninfo_to_dict(text).items()}


def live_leases(broker: BrokerThread, cluster: str, pod: str) -> list[Any]:
    store = broker.broker.store()
    try:
        return list(store.leases.list_by_selector(Selector(cluster=cluster, pod_name=pod)))
    finally:
        store.close()


def live_leases_all(broker: BrokerThread, cluster: str, pod: str) -> list[Any]:
    store = broker.broker.store()
    try:
        selector = Selector(cluster=cluster, pod_name=pod, states=frozenset(LeaseState))
        return list(store.leases.list_by_selector(selector))
    finally:
        store.close()


def vault_leases(root: Any, prefix: str = "keyferry/") -> set[str]:
    """Every lease id Vault holds under `prefix` (root token's view)."""
    found: set[str] = set()
    pending = [prefix]
    while pending:
        folder = pending.pop()
        listed = root.list(f"sys/leases/lookup/{folder}")
        for key in (listed or {}).get("data", {}).get("keys", []):
            (pending.append if key.endswith("/") else found.add)(f"{folder}{key}")
    return found
