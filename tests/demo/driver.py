"""`keyferry demo`: keyferry's main job on the bed's real servers, narrated step by step.

Vault (dev), PostgreSQL, moto, etcd and two Kubernetes clusters from the bed; the broker on
its embedded defaults; the webhook registered in both clusters; one annotated pod per cluster
(a database DSN and AWS keys) whose injected agent runs exactly as injected (the e2e kubelet
harness, which needs root); then a rotation, a pod's termination and the audit trail's
verification.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import ClientError

from tests.bed.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.moto import MotoServer
from tests.bed.postgres import PostgresServer
from tests.e2e.kubelet import PodRunner
from tests.e2e.pods import live_leases, live_leases_all
from tests.e2e.scene import BrokerThread, webhooks
from tests.integration.kube_helpers import core, eventually
from tests.integration.member_clusters import RBAC, broker_kubeconfig
from tests.integration.workloads import ensure_namespace

from . import stage
from .pods import (
    NAMESPACE,
    aws_keys,
    caller_arn,
    credential,
    delete_pod,
    prove,
    show_aws_file,
    show_file,
    start_pod,
)
from .say import Narrator

DOCS = Path(__file__).resolve().parents[2] / "docs"
SUCCESS = "demo: SUCCESS"


def run(hold: bool = False, show_secrets: bool = False) -> int:
    """Run the demo; 0 on success, 1 on failure, 2 when it cannot run here."""
    say = Narrator(show_secrets)
    if os.geteuid() != 0:
        say.line(
            "demo: FAILED: needs root (the kubelet harness binds each pod's volumes in a "
            "mount namespace and runs its containers as the UIDs the pod spec names)"
        )
        return 2
    started = time.monotonic()
    bed = Bed(keep_files=hold)
    try:
        with ExitStack() as stack:
            stack.callback(bed.stop)
            _main_job(bed, stack, say, hold)
            if hold:
                _hold(say)
            say.line("stopping everything the demo started")
    except KeyboardInterrupt:
        say.line("demo: interrupted, everything stopped")
        return 1
    except Exception as error:  # any failure ends the demo with its reason
        say.failed(error)
        say.line("demo: FAILED (everything it started is stopped)")
        return 1
    say.line(f"{SUCCESS}: in {time.monotonic() - started:.0f}s, two clusters served, a credential "
             "rotated, a pod's leases revoked, the audit trail verified")  # fmt: skip
    return 0


def _main_job(bed: Bed, stack: ExitStack, say: Narrator, hold: bool) -> None:
    folder = bed.workspace.root / "demo"
    folder.mkdir()

    say.begin(1, "start Vault, PostgreSQL, moto, two Kubernetes clusters and the broker")
    servers = stage.start_servers(bed, say)
    vault, postgres, clusters = servers.vault, servers.postgres, servers.clusters
    approle = stage.prepare_vault(vault.client(), servers, say)
    broker, context = stage.start_broker(folder, vault, approle, clusters, say)
    stack.callback(broker.stop)
    say.line(f"broker: workload listener 127.0.0.1:{broker.broker.port} (generated TLS "
             f"identity), admin listener 127.0.0.1:{broker.broker.server.admin_port} "
             "(mutual TLS), store SQLite")  # fmt: skip

    say.begin(2, "register the clusters, apply roles and policies")
    for cluster in clusters.values():
        say.line(f"cluster {cluster.name}: the broker's RBAC applied as-is ({RBAC.name}); "
                 "the broker reaches it with its ServiceAccount's token")  # fmt: skip
        kubeconfig = broker_kubeconfig(cluster, folder)
        stage.keyferry(say, "clusters", "register", "--kubeconfig", str(kubeconfig),
                       "--context", cluster.name, "--keyferry-context", str(context))  # fmt: skip
    say.line(f"Cedar policies: {DOCS / 'examples' / 'policies.cedar'} (loaded at start)")
    stage.keyferry(say, "roles", "apply", "-f", str(DOCS / "examples" / "roles.yaml"),
                   "--context", str(context))  # fmt: skip

    say.begin(3, "register the webhook in both clusters, create one annotated pod in each")
    run_id = secrets.token_hex(3)
    opt_in = (f"keyferry.io/demo-{run_id}", "on")
    for cluster in clusters.values():
        with cluster.api_client() as api:
            ensure_namespace(api, NAMESPACE)
            core(api).patch_namespace(NAMESPACE, {"metadata": {"labels": dict([opt_in])}})
    hooks = stack.enter_context(
        webhooks(list(clusters.values()), folder / "webhook", broker.broker, run_id, opt_in)
    )
    for hook in hooks.values():
        say.line(f"webhook for cluster {hook.cluster.name}: MutatingWebhookConfiguration "
                 f"{hook.registration}, namespaces labelled {opt_in[0]}={opt_in[1]}")  # fmt: skip
    (folder / "pods").mkdir()
    runners: list[PodRunner] = []
    stack.callback(_stop_all, runners)
    pods = {
        name: start_pod(cluster, postgres, servers.moto, folder / "pods", runners, say)
        for name, cluster in clusters.items()
    }

    say.begin(4, "each pod's credential files, a query through the DSN, an STS call with the keys")
    for runner, _agent in pods.values():
        values = show_file(runner, say)
        keys = show_aws_file(runner, say)
        seen = prove(runner, say)
        if seen["user"] != values["user"]:
            raise RuntimeError(f"the app logged in as {seen['user']}, not {values['user']}")
        if seen["arn"] != caller_arn(servers.moto, keys):
            raise RuntimeError(f"the app called STS as {seen['arn']}, not with its file's keys")
        leases = live_leases(broker, runner.cluster.name, runner.name)
        for lease in leases:
            say.detail(f"lease {lease.id}: role {lease.role}, generation {lease.generation}")

    say.begin(5, "rotate one pod's lease, terminate the other pod, verify the audit trail")
    _rotate(broker, context, pods["a"][0], postgres, say)
    _terminate(broker, clusters["b"], *pods["b"], servers, say)
    say.line("signing an audit checkpoint now (the broker also signs one at every stop)")
    broker.call(broker.broker.server.runtime.checkpoint())
    stage.keyferry(say, "audit", "verify", "--config", str(folder / "broker.yaml"))
    if hold:
        _how_to_reach(broker, context, folder, clusters, say)


def _stop_all(runners: list[PodRunner]) -> None:
    for runner in runners:
        runner.stop()


def _rotate(
    broker: BrokerThread, context: Path, runner: PodRunner, postgres: PostgresServer, say: Narrator
) -> None:
    (lease,) = [
        lease
        for lease in live_leases(broker, runner.cluster.name, runner.name)
        if lease.role == "orders-db-ro"
    ]
    before, old = credential(runner)
    stage.keyferry(say, "rotate", "--lease", lease.id, "--context", str(context))
    eventually(lambda: credential(runner)[0] != before, "the agent swapping the file")
    new = show_file(runner, say, " after the rotation")
    say.line(f"rotation: database user {old['user']} -> {new['user']}")
    prove(runner, say)

    def old_login_refused() -> str | None:
        try:
            postgres.connect(old["user"], old["password"]).close()
        except psycopg.OperationalError as error:
            return str(error).strip().splitlines()[-1]
        return None

    refusal = eventually(old_login_refused, "the old database user revoked after the Ack", 30)
    say.line(f"old login refused: {old['user']}: {refusal}")


def _terminate(
    broker: BrokerThread,
    cluster: KubeCluster,
    runner: PodRunner,
    agent: subprocess.Popen[bytes],
    servers: stage.Servers,
    say: Narrator,
) -> None:
    postgres = servers.postgres
    _text, login = credential(runner)
    keys = aws_keys(runner)
    say.line(f"terminating pod {runner.name} on cluster {cluster.name}: SIGTERM to its agent, "
             "then the Pod is deleted")  # fmt: skip
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(timeout=30)
    say.detail(f"agent exited {code}")
    delete_pod(cluster, runner.name)
    for lease in live_leases_all(broker, cluster.name, runner.name):
        say.line(f"lease {lease.id} of {runner.name}: {lease.state.value}")
        if lease.state.value != "revoked":
            raise RuntimeError(f"lease {lease.id} is {lease.state.value}, not revoked")
    try:
        postgres.connect(login["user"], login["password"]).close()
    except psycopg.OperationalError:
        say.line(f"old login refused: {login['user']} no longer exists")
    else:
        raise RuntimeError(f"{login['user']} can still log in after its pod ended")
    refusal = eventually(lambda: _sts_refusal(servers.moto, keys), "the IAM user deleted", 30)
    say.line(f"old AWS keys refused: {keys['aws_access_key_id']}: {refusal}")


def _sts_refusal(moto: MotoServer, keys: dict[str, str]) -> str | None:
    """The error code STS answers `keys` with, or None while they still work."""
    try:
        caller_arn(moto, keys)
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return None


def _how_to_reach(
    broker: BrokerThread,
    context: Path,
    folder: Path,
    clusters: dict[str, KubeCluster],
    say: Narrator,
) -> None:
    say.begin(6, "held: everything keeps running until Ctrl-C")
    say.detail(f"broker workload listener: 127.0.0.1:{broker.broker.port} (CA {broker.broker.ca})")
    say.detail(f"broker config: {folder / 'broker.yaml'}")
    say.detail(f"export KEYFERRY_CONTEXT={context}   # then: keyferry roles list")
    for cluster in clusters.values():
        say.detail(f"export KUBECONFIG={cluster.kubeconfig}   # cluster {cluster.name}")


def _hold(say: Narrator) -> None:
    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say.line("Ctrl-C: stopping")
