"""`keyferry demo`: keyferry's main job on the bed's real servers, narrated step by step.

Vault (dev), PostgreSQL, moto, etcd and two Kubernetes clusters from the bed; the broker on
its embedded defaults; the webhook registered in both clusters; one annotated pod per cluster
(a database DSN and AWS keys). Cluster a has a real node (kubelet, containerd, the images
the bed builds): its pod is scheduled and run by the kubelet, the agent from its image
exactly as injected. Cluster b has no node (one per machine), so its pod's agent runs on
the e2e kubelet harness; where the node cannot start, cluster a's pod does too, and the
narration says why. Then a rotation, both pods' ends and the audit trail's verification.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import ClientError

from tests.bed.bed import Bed
from tests.bed.errors import ServerUnavailable
from tests.bed.kube import KubeCluster
from tests.bed.moto import MotoServer
from tests.bed.node import Node
from tests.bed.postgres import PostgresServer
from tests.scene.broker_thread import BrokerThread, webhooks
from tests.scene.kube_helpers import eventually
from tests.scene.kubelet import PodRunner
from tests.scene.member_clusters import RBAC, broker_kubeconfig
from tests.scene.nodepods import NodeImages, load_images, prepare_namespace
from tests.scene.pods import live_leases, live_leases_all

from . import stage
from .pods import (
    NAMESPACE,
    DemoPod,
    HarnessPod,
    RealPod,
    aws_keys,
    caller_arn,
    credential,
    delete_pod,
    prove,
    show_aws_file,
    show_file,
    start_pod,
    start_real_pod,
)
from .say import Narrator

DOCS = Path(__file__).resolve().parents[2] / "docs"
SUCCESS = "demo: SUCCESS"


def run(hold: bool = False, show_secrets: bool = False) -> int:
    """Run the demo; 0 on success, 1 on failure, 2 when it cannot run here."""
    say = Narrator(show_secrets)
    if os.geteuid() != 0:
        say.line(
            "demo: FAILED: needs root (cluster a's real node runs containerd and a kubelet, "
            "and the kubelet harness binds each pod's volumes in a mount namespace and runs "
            "its containers as the UIDs the pod spec names)"
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
             "rotated, the pods' leases revoked, the audit trail verified")  # fmt: skip
    return 0


def _main_job(bed: Bed, stack: ExitStack, say: Narrator, hold: bool) -> None:
    folder = bed.workspace.root / "demo"
    folder.mkdir()

    say.begin(1, "start Vault, PostgreSQL, moto, two Kubernetes clusters and the broker")
    servers = stage.start_servers(bed, say)
    vault, postgres, clusters = servers.vault, servers.postgres, servers.clusters
    node = _start_node(bed, say)
    # The images' import into the node's containerd (most of a minute on a loaded machine)
    # runs while Vault, the broker and the clusters' registration are set up; the pods of
    # step 3 are the first to need the images.
    loading = stack.enter_context(ThreadPoolExecutor(1, "images"))
    importing = loading.submit(load_images, node) if node is not None else None
    approle = stage.prepare_vault(vault.client(), servers, say)
    host = node.address if node is not None else "127.0.0.1"
    broker, context = stage.start_broker(folder, vault, approle, clusters, say, host)
    stack.callback(broker.stop)
    say.line(f"broker: workload listener {host}:{broker.broker.port} (generated TLS "
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
    real = _loaded(node, importing, say)
    run_id = secrets.token_hex(3)
    opt_in = (f"keyferry.io/demo-{run_id}", "on")
    for cluster in clusters.values():
        prepare_namespace(cluster, NAMESPACE, opt_in)
    agent_image = real[1].agent if real else "keyferry/agent:harness"
    hooks = stack.enter_context(
        webhooks(
            list(clusters.values()), folder / "webhook", broker.broker, run_id, opt_in, agent_image
        )
    )
    for hook in hooks.values():
        say.line(f"webhook for cluster {hook.cluster.name}: MutatingWebhookConfiguration "
                 f"{hook.registration}, namespaces labelled {opt_in[0]}={opt_in[1]}")  # fmt: skip
    (folder / "pods").mkdir()
    runners: list[PodRunner] = []
    stack.callback(_stop_all, runners)
    pods: dict[str, DemoPod] = {}
    for name, cluster in clusters.items():
        if real and name == real[0].cluster.name:
            node, images = real
            say.line(f"cluster {name}: a real pod, scheduled on {node.name} and run by its kubelet")
            pods[name] = start_real_pod(cluster, postgres, servers.moto, node, images, say)
        else:
            say.line(f"cluster {name}: no node here, so the kubelet harness runs the injected "
                     "agent as a local process from the mutated pod")  # fmt: skip
            pods[name] = start_pod(cluster, postgres, servers.moto, folder / "pods", runners, say)

    say.begin(4, "each pod's credential files, a query through the DSN, an STS call with the keys")
    for pod in pods.values():
        values = show_file(pod, say)
        keys = show_aws_file(pod, say)
        seen = prove(pod, say)
        if seen["user"] != values["user"]:
            raise RuntimeError(f"the app logged in as {seen['user']}, not {values['user']}")
        if seen["arn"] != caller_arn(servers.moto, keys):
            raise RuntimeError(f"the app called STS as {seen['arn']}, not with its file's keys")
        leases = live_leases(broker, pod.cluster.name, pod.name)
        for lease in leases:
            say.detail(f"lease {lease.id}: role {lease.role}, generation {lease.generation}")

    say.begin(5, "rotate one pod's lease, end both pods, verify the audit trail")
    _rotate(broker, context, pods["a"], postgres, say)
    for pod in pods.values():
        if isinstance(pod, RealPod):
            _delete_real(broker, pod, servers, say)
        else:
            _terminate(broker, pod, servers, say)
    say.line("signing an audit checkpoint now (the broker also signs one at every stop)")
    broker.call(broker.broker.server.runtime.checkpoint())
    stage.keyferry(say, "audit", "verify", "--config", str(folder / "broker.yaml"))
    if hold:
        _how_to_reach(broker, context, folder, clusters, say)


def _stop_all(runners: list[PodRunner]) -> None:
    for runner in runners:
        runner.stop()


def _start_node(bed: Bed, say: Narrator) -> Node | None:
    """Cluster a's real node; None, with the reason said, where this machine cannot run it
    (its pod then runs on the kubelet harness)."""
    try:
        node = bed.node()
    except ServerUnavailable as error:
        _no_node(error, say)
        return None
    say.detail(f"real node: {node.describe()}")
    return node


def _loaded(
    node: Node | None, images: Future[NodeImages] | None, say: Narrator
) -> tuple[Node, NodeImages] | None:
    """The node with the agent and app images loaded (`images`, the import started in step
    1); None, with the reason said, where there is no node or the images cannot be loaded."""
    if node is None or images is None:
        return None
    try:
        loaded = images.result()
    except ServerUnavailable as error:
        _no_node(error, say)
        return None
    say.detail(f"images in the node's containerd (built here, never pulled): {loaded.agent}, "
               f"{loaded.app}")  # fmt: skip
    return node, loaded


def _no_node(error: ServerUnavailable, say: Narrator) -> None:
    say.line(f"cluster a: no real node on this machine ({error}); its pod runs on the "
             "kubelet harness instead")  # fmt: skip


def _rotate(
    broker: BrokerThread, context: Path, pod: DemoPod, postgres: PostgresServer, say: Narrator
) -> None:
    (lease,) = [
        lease
        for lease in live_leases(broker, pod.cluster.name, pod.name)
        if lease.role == "orders-db-ro"
    ]
    before, old = credential(pod)
    stage.keyferry(say, "rotate", "--lease", lease.id, "--context", str(context))
    eventually(lambda: credential(pod)[0] != before, "the agent swapping the file")
    new = show_file(pod, say, " after the rotation")
    say.line(f"rotation: database user {old['user']} -> {new['user']}")
    prove(pod, say)

    def old_login_refused() -> str | None:
        try:
            postgres.connect(old["user"], old["password"]).close()
        except psycopg.OperationalError as error:
            return str(error).strip().splitlines()[-1]
        return None

    refusal = eventually(old_login_refused, "the old database user revoked after the Ack", 30)
    say.line(f"old login refused: {old['user']}: {refusal}")


def _delete_real(broker: BrokerThread, pod: RealPod, servers: stage.Servers, say: Narrator) -> None:
    _text, login = credential(pod)
    keys = aws_keys(pod)
    say.line(f"$ kubectl delete pod {pod.name} -n {NAMESPACE}   # cluster {pod.cluster.name}")
    say.detail("the kubelet sends SIGTERM to the agent; the broker's pod watch sees the pod go")
    took = pod.pod.delete()
    say.detail(f"pod gone after {took:.1f}s")

    def ended() -> list[Any] | None:
        leases = live_leases_all(broker, pod.cluster.name, pod.name)
        return (
            leases if leases and all(lease.state.value == "revoked" for lease in leases) else None
        )

    for lease in eventually(ended, f"the leases of {pod.name} revoked", 30):
        say.line(f"lease {lease.id} of {pod.name}: {lease.state.value}")
    _refusals(servers, login, keys, say)


def _refusals(
    servers: stage.Servers, login: dict[str, str], keys: dict[str, str], say: Narrator
) -> None:
    try:
        servers.postgres.connect(login["user"], login["password"]).close()
    except psycopg.OperationalError:
        say.line(f"old login refused: {login['user']} no longer exists")
    else:
        raise RuntimeError(f"{login['user']} can still log in after its pod ended")
    refusal = eventually(lambda: _sts_refusal(servers.moto, keys), "the IAM user deleted", 30)
    say.line(f"old AWS keys refused: {keys['aws_access_key_id']}: {refusal}")


def _terminate(
    broker: BrokerThread, pod: HarnessPod, servers: stage.Servers, say: Narrator
) -> None:
    cluster, runner, agent = pod.cluster, pod.runner, pod.agent
    _text, login = credential(pod)
    keys = aws_keys(pod)
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
    _refusals(servers, login, keys, say)


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
