"""The demo's pods: one annotated pod per cluster, created through the real API server
(the keyferry webhook mutates it) and its app container proving the credential works. On
cluster a the real node's kubelet runs the pod from the bed's images (RealPod); cluster b
has no node, so there the e2e kubelet harness runs its injected agent (HarnessPod)."""

from __future__ import annotations

import configparser
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.bed.kube import KubeCluster
from tests.bed.moto import REGION, MotoServer
from tests.bed.node import Node
from tests.bed.postgres import PostgresServer
from tests.scene.kube_helpers import core
from tests.scene.kubelet import PodRunner
from tests.scene.nodepods import NodeImages, NodePod, agent_status, injected
from tests.scene.nodepods import create as create_node_pod
from tests.scene.nodepods import pod_body as node_pod_body
from tests.scene.pods import AGENT, create, dsn_values, mutated, runner_for, until_ready
from tests.scene.workloads import ACCOUNT

from .say import Narrator

NAMESPACE = "orders"  # docs/examples/policies.cedar lets workloads here get database roles
SECRETS = "/keyferry/secrets"
APP_UID, FS_GROUP = 1001, 3000
# The real pod's proof, run in its app container (Debian's psql and aws CLI): its UID, the
# database user and the catalog's table count through the DSN file, the caller's ARN
# (Debian's aws CLI 2.9 predates AWS_ENDPOINT_URL: the endpoint goes on its command line).
REAL_PROOF = """
id -u
psql "$(cat "$SECRETS/db")" -At -F ' ' -c 'select current_user, count(*) from pg_catalog.pg_tables'
aws --endpoint-url "$AWS_ENDPOINT_URL" sts get-caller-identity --query Arn --output text
"""
# The app: a query through the DSN file, and STS GetCallerIdentity with the keys of the
# aws-credentials file (boto3 reads it through AWS_SHARED_CREDENTIALS_FILE).
PROOF = """
import json, os, boto3, psycopg
with psycopg.connect(open(os.environ["SECRETS"] + "/db").read()) as conn:
    user, count = conn.execute("select current_user, count(*) from pg_catalog.pg_tables").fetchone()
arn = boto3.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"uid": os.getuid(), "user": user, "tables": count, "arn": arn}))
"""


def pod_body(name: str, postgres: PostgresServer, moto: MotoServer) -> dict[str, Any]:
    env = {"SECRETS": SECRETS, "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port)}
    env["PGDATABASE"] = "postgres"
    env["AWS_SHARED_CREDENTIALS_FILE"] = f"{SECRETS}/aws"
    env["AWS_CONFIG_FILE"] = "/dev/null"  # no profile of this host's user leaks in
    env["AWS_ENDPOINT_URL"] = moto.endpoint
    env["AWS_DEFAULT_REGION"] = REGION
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {
                "keyferry.io/inject": "true",
                "keyferry.io/role.db": "orders-db-ro",
                "keyferry.io/role.aws": "orders-aws",
            },
        },
        "spec": {
            "serviceAccountName": ACCOUNT,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "fsGroup": FS_GROUP},
            "containers": [
                {
                    "name": "app",
                    "image": "example/orders-app",
                    "command": ["python", "-c", PROOF],
                    "securityContext": {"runAsUser": APP_UID},
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ],
        },
    }


def create_mutated(
    cluster: KubeCluster, body: dict[str, Any], timeout: float = 30.0
) -> dict[str, Any]:
    """Create the pod; while the webhook's registration is still reaching the API server
    (a second or so), a pod may be stored unmutated: delete it and create it again."""
    deadline = time.monotonic() + timeout
    while True:
        stored = create(cluster, body, NAMESPACE)
        if mutated(stored):
            return stored
        delete_pod(cluster, body["metadata"]["name"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"the webhook never mutated a pod on cluster {cluster.name}")
        time.sleep(0.5)


def delete_pod(cluster: KubeCluster, name: str) -> None:
    with cluster.api_client() as api:
        core(api).delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        while any(p.metadata.name == name for p in core(api).list_namespaced_pod(NAMESPACE).items):
            time.sleep(0.2)


class HarnessPod:
    """A pod whose containers the e2e kubelet harness runs as local processes (cluster b:
    the bed's second cluster has no node)."""

    where = "kubelet harness"

    def __init__(self, runner: PodRunner, agent: subprocess.Popen[bytes]) -> None:
        self.runner = runner
        self.agent = agent
        self.name = runner.name
        self.cluster = runner.cluster

    def secret(self, file: str) -> str:
        return (self.runner.volumes["keyferry-secrets"] / file).read_text()

    def mode(self, file: str) -> int:
        return (self.runner.volumes["keyferry-secrets"] / file).stat().st_mode & 0o777

    def run_app(self) -> dict[str, Any]:
        """Run the pod's app container (as its own UID) with the DSN; what it saw."""
        app = self.runner.start("app")
        out, err = app.communicate(timeout=30)
        if app.returncode != 0:
            raise RuntimeError(f"the app of pod {self.name} failed: {err.decode()[-500:]}")
        seen: dict[str, Any] = json.loads(out)
        return seen


class RealPod:
    """A pod the real node's kubelet runs (cluster a); seen through `kubectl exec`."""

    where = "real pod on node"

    def __init__(self, pod: NodePod) -> None:
        self.pod = pod
        self.name = pod.name
        self.cluster = pod.cluster

    def secret(self, file: str) -> str:
        return self.pod.secret(file)

    def mode(self, file: str) -> int:
        return int(self.pod.exec("stat", "-c", "%a", f"{SECRETS}/{file}").strip(), 8)

    def run_app(self) -> dict[str, Any]:
        """psql and the aws CLI in the running app container, with the files alone."""
        out = self.pod.sh(REAL_PROOF).split()
        return {"uid": int(out[0]), "user": out[1], "tables": int(out[2]), "arn": out[3]}


DemoPod = HarnessPod | RealPod


def start_pod(
    cluster: KubeCluster,
    postgres: PostgresServer,
    moto: MotoServer,
    folder: Path,
    runners: list[PodRunner],
    say: Narrator,
) -> HarnessPod:
    name = f"orders-app-{cluster.name}"
    stored = create_mutated(cluster, pod_body(name, postgres, moto))
    runner = runner_for(cluster, stored, folder, runners)
    _show_injection(runner.pod, cluster, say)
    process = runner.start(AGENT)
    until_ready(runner, process)
    say.detail(
        f"agent running under the kubelet harness (pid {process.pid}); its startupProbe passes"
    )
    return HarnessPod(runner, process)


def start_real_pod(
    cluster: KubeCluster,
    postgres: PostgresServer,
    moto: MotoServer,
    node: Node,
    images: NodeImages,
    say: Narrator,
) -> RealPod:
    """The annotated pod on the real node: the kubelet runs the agent image as injected
    (a native sidecar with its startupProbe) before the app image (psql, aws)."""
    name = f"orders-app-{cluster.name}"
    env = {"PGHOST": node.address, "PGPORT": str(postgres.port), "PGDATABASE": "postgres"}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": f"{SECRETS}/aws", "AWS_CONFIG_FILE": "/dev/null"}
    env |= {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_DEFAULT_REGION": REGION}
    env["HOME"] = "/tmp"  # noqa: S108 - the aws CLI's cache, inside the container
    roles = {"db": "orders-db-ro", "aws": "orders-aws"}
    body = node_pod_body(name, images.app, roles, env=env)
    started = time.monotonic()
    pod = create_node_pod(cluster, NAMESPACE, body)
    if not injected(pod):
        raise RuntimeError(f"the webhook did not mutate pod {name} on cluster {cluster.name}")
    _show_injection(pod.stored(), cluster, say)
    ready = pod.wait_ready()
    agent = agent_status(ready)
    say.detail(
        f"scheduled on {ready.spec.node_name}; the kubelet started the agent image "
        f"{agent.image} (a native sidecar), its startupProbe passed, then the app image "
        f"{images.app}: Running and Ready {time.monotonic() - started:.1f}s after creation"
    )
    return RealPod(pod)


def _show_injection(pod: dict[str, Any], cluster: KubeCluster, say: Narrator) -> None:
    spec = pod["spec"]
    agent = next(c for c in spec.get("initContainers") or [] if c["name"] == AGENT)
    name = pod["metadata"]["name"]
    say.line(f"pod {NAMESPACE}/{name} on cluster {cluster.name}: created, mutated by the webhook")
    say.detail(f"init containers: {[c['name'] for c in spec.get('initContainers') or []]}")
    say.detail(f"agent: {' '.join(agent.get('command') or [])} {' '.join(agent.get('args') or [])}")
    say.detail(f"volumes: {[v['name'] for v in spec.get('volumes') or []]}")


def credential(pod: DemoPod) -> tuple[str, dict[str, str]]:
    text = pod.secret("db")
    return text, dsn_values(text)


def aws_keys(pod: DemoPod) -> dict[str, str]:
    """The [default] profile of the pod's aws-credentials file."""
    parser = configparser.ConfigParser()
    parser.read_string(pod.secret("aws"))
    return dict(parser["default"])


def show_file(pod: DemoPod, say: Narrator, label: str = "") -> dict[str, str]:
    """Show the pod's db file (password masked); its DSN values."""
    text, values = credential(pod)
    _show(pod, "db", text, label, say, values.get("password", ""))
    return values


def show_aws_file(pod: DemoPod, say: Narrator) -> dict[str, str]:
    """Show the pod's aws file (secret key masked); its keys."""
    keys = aws_keys(pod)
    _show(pod, "aws", pod.secret("aws"), "", say, keys["aws_secret_access_key"])
    return keys


def _show(pod: DemoPod, name: str, text: str, label: str, say: Narrator, secret: str) -> None:
    say.line(f"{SECRETS}/{name} in pod {pod.name}{label} (mode {pod.mode(name):04o}):")
    for line in say.secret_text(text.strip(), secret).splitlines():
        say.detail(line)


def prove(pod: DemoPod, say: Narrator) -> dict[str, Any]:
    """Run the pod's app with the credential files; what it saw."""
    seen = pod.run_app()
    say.line(
        f"app container of {pod.name} (uid {seen['uid']}) queried PostgreSQL through the "
        f"DSN as {seen['user']}: {seen['tables']} catalog tables visible"
    )
    say.line(
        f"app container of {pod.name} called STS GetCallerIdentity at moto with the keys "
        f"of {SECRETS}/aws: {seen['arn']}"
    )
    return seen


def caller_arn(moto: MotoServer, keys: dict[str, str]) -> str:
    """STS GetCallerIdentity with `keys` (an aws-credentials profile), from outside the pod."""
    sts: Any = moto.client("sts", keys["aws_access_key_id"], keys["aws_secret_access_key"])
    return str(sts.get_caller_identity()["Arn"])
