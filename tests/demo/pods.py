"""The demo's pods: one annotated pod per cluster, created through the real API server
(the keyferry webhook mutates it), its injected agent run by the e2e kubelet harness, and
its app container proving the credential works."""

from __future__ import annotations

import configparser
import json
import time
from pathlib import Path
from typing import Any

from tests.bed.kube import KubeCluster
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import PostgresServer
from tests.e2e.kubelet import PodRunner
from tests.e2e.pods import AGENT, create, dsn_values, mutated, runner_for, until_ready
from tests.integration.kube_helpers import core
from tests.integration.workloads import ACCOUNT

from .say import Narrator

NAMESPACE = "orders"  # docs/examples/policies.cedar lets workloads here get database roles
SECRETS = "/keyferry/secrets"
APP_UID, FS_GROUP = 1001, 3000
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


def start_pod(
    cluster: KubeCluster,
    postgres: PostgresServer,
    moto: MotoServer,
    folder: Path,
    runners: list[PodRunner],
    say: Narrator,
) -> tuple[PodRunner, Any]:
    name = f"orders-app-{cluster.name}"
    stored = create_mutated(cluster, pod_body(name, postgres, moto))
    runner = runner_for(cluster, stored, folder, runners)
    spec = runner.pod["spec"]
    agent = runner.container(AGENT)
    say.line(f"pod {NAMESPACE}/{name} on cluster {cluster.name}: created, mutated by the webhook")
    say.detail(f"init containers: {[c['name'] for c in spec.get('initContainers') or []]}")
    say.detail(f"agent: {' '.join(agent.get('command') or [])} {' '.join(agent.get('args') or [])}")
    say.detail(f"volumes: {[v['name'] for v in spec.get('volumes') or []]}")
    process = runner.start(AGENT)
    until_ready(runner, process)
    say.detail(f"agent running (pid {process.pid}); its startupProbe passes")
    return runner, process


def credential(runner: PodRunner) -> tuple[str, dict[str, str]]:
    text = (runner.volumes["keyferry-secrets"] / "db").read_text()
    return text, dsn_values(text)


def aws_keys(runner: PodRunner) -> dict[str, str]:
    """The [default] profile of the pod's aws-credentials file."""
    parser = configparser.ConfigParser()
    parser.read_string((runner.volumes["keyferry-secrets"] / "aws").read_text())
    return dict(parser["default"])


def show_file(runner: PodRunner, say: Narrator, label: str = "") -> dict[str, str]:
    """Show the pod's db file (password masked); its DSN values."""
    text, values = credential(runner)
    _show(runner, "db", text, label, say, values.get("password", ""))
    return values


def show_aws_file(runner: PodRunner, say: Narrator) -> dict[str, str]:
    """Show the pod's aws file (secret key masked); its keys."""
    keys = aws_keys(runner)
    text = (runner.volumes["keyferry-secrets"] / "aws").read_text()
    _show(runner, "aws", text, "", say, keys["aws_secret_access_key"])
    return keys


def _show(runner: PodRunner, name: str, text: str, label: str, say: Narrator, secret: str) -> None:
    mode = f"{(runner.volumes['keyferry-secrets'] / name).stat().st_mode & 0o777:04o}"
    say.line(f"{SECRETS}/{name} in pod {runner.name}{label} (mode {mode}):")
    for line in say.secret_text(text.strip(), secret).splitlines():
        say.detail(line)


def prove(runner: PodRunner, say: Narrator) -> dict[str, Any]:
    """Run the pod's app container (as its own UID) with the DSN; what it saw."""
    app = runner.start("app")
    out, err = app.communicate(timeout=30)
    if app.returncode != 0:
        raise RuntimeError(f"the app of pod {runner.name} failed: {err.decode()[-500:]}")
    seen: dict[str, Any] = json.loads(out)
    say.line(
        f"app container of {runner.name} (uid {seen['uid']}) queried PostgreSQL through the "
        f"DSN as {seen['user']}: {seen['tables']} catalog tables visible"
    )
    say.line(
        f"app container of {runner.name} called STS GetCallerIdentity at moto with the keys "
        f"of {SECRETS}/aws: {seen['arn']}"
    )
    return seen


def caller_arn(moto: MotoServer, keys: dict[str, str]) -> str:
    """STS GetCallerIdentity with `keys` (an aws-credentials profile), from outside the pod."""
    sts: Any = moto.client("sts", keys["aws_access_key_id"], keys["aws_secret_access_key"])
    return str(sts.get_caller_identity()["Arn"])
