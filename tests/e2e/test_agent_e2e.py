"""The agent end to end: pods created through the real API servers of clusters a and b,
mutated by the real webhook, and the injected agent run by the kubelet harness (kubelet.py)
from the mutated pod's JSON alone, against a broker on the bed's Vault, PostgreSQL and moto.

Every pod here is a Pod object in a real API server; its containers run as local processes
in their own mount namespaces, as the UIDs the pod spec says. The app container of the test
pods is a small Python program that logs in with the DSN, reads the KV value and calls STS
with the aws-credentials file, as a UID other than the agent's (fsGroup case).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hvac
import psycopg
import pytest
from kubernetes.client.exceptions import ApiException

from broker.api.v1 import broker_pb2_grpc, rotation_pb2, rotation_pb2_grpc
from broker.backends.transit import TransitSigner
from broker.store import LeaseState
from injector.webhook import patch as webhook_patch
from tests.bed.kube import KubeCluster
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.integration.engines import enable, enable_approle, mount_postgres
from tests.integration.kube_helpers import apps, core, eventually
from tests.integration.stores import sqlite_url
from tests.integration.test_issue import MOUNT, POLICY, TRANSIT_KEY, TRANSIT_MOUNT, config
from tests.integration.workloads import ensure_namespace

from .kubelet import PodRunner, resident_kib
from .pods import (
    AGENT,
    create,
    dsn_values,
    live_leases,
    live_leases_all,
    log_lines,
    mutated,
    runner_for,
    until_ready,
)
from .scene import KV_VALUES, BrokerThread, Webhook, mount_kv, mount_s3_reader, webhooks

pytestmark = pytest.mark.bed
RUN = secrets.token_hex(3)
OPT_IN = (f"keyferry.test/e2e-{RUN}", "on")
APP_UID, OTHER_UID, FS_GROUP = 1001, 1002, 3000
AGENT_UID = 65532  # the webhook's agent.run_as_user: the app containers' UIDs differ
SECRETS = "/keyferry/secrets"

APP = """
import json, os, boto3, psycopg
d = os.environ["SECRETS"]
out = {"uid": os.getuid()}
with psycopg.connect(open(f"{d}/db").read()) as conn:
    out["user"] = conn.execute("select current_user").fetchone()[0]
out["config"] = json.load(open(f"{d}/cfg"))
sts = boto3.client("sts", endpoint_url=os.environ["STS_ENDPOINT"], region_name=os.environ["REGION"])
out["arn"] = sts.get_caller_identity()["Arn"]
print(json.dumps(out))
"""


# --- the scene ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    postgres: PostgresServer,
    moto: MotoServer,
    kube_clusters: dict[str, KubeCluster],
) -> Iterator[BrokerThread]:
    folder = tmp_path_factory.mktemp("e2e-broker")
    root: hvac.Client = vault.client()
    approle = enable_approle(root, "keyferry-broker", POLICY.read_text(), "keyferry-broker")
    mount_postgres(root, postgres, MOUNT, "ro")
    mount_kv(root)
    mount_s3_reader(root, moto)
    enable(root, "transit", TRANSIT_MOUNT)
    root.secrets.transit.create_key(name=TRANSIT_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT)
    TransitSigner(root, TRANSIT_KEY, TRANSIT_MOUNT)
    data = config(folder, vault, approle, kube_clusters, sqlite_url(folder))
    data["policies"].append(str(Path(__file__).with_name("policies.cedar")))
    running = BrokerThread(data, folder)
    yield running
    running.stop()
    root.sys.disable_secrets_engine(MOUNT)


@pytest.fixture(scope="module")
def hooks(
    broker: BrokerThread,
    kube_clusters: dict[str, KubeCluster],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Webhook]]:
    clusters = [kube_clusters["a"], kube_clusters["b"]]
    for cluster in clusters:
        with cluster.api_client() as api:
            ensure_namespace(api, "orders")
            core(api).patch_namespace("orders", {"metadata": {"labels": dict([OPT_IN])}})
    folder = tmp_path_factory.mktemp("e2e-webhook")
    with webhooks(clusters, folder, broker.broker, RUN, OPT_IN) as started:
        for hook in started.values():

            def active(cluster: KubeCluster = hook.cluster) -> bool:
                return mutated(create(cluster, pod_body()))

            eventually(active, f"the webhook patching pods on {hook.cluster.name}")
        yield started


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[list[PodRunner]]:
    started: list[PodRunner] = []
    yield started
    for runner in started:
        runner.stop()


def pod_body(
    name: str | None = None,
    roles: dict[str, str] | None = None,
    app_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    roles = roles or {"db": "orders-db-ro"}
    annotations = {"keyferry.io/inject": "true"}
    annotations |= {f"keyferry.io/role.{n}": r for n, r in roles.items()}
    metadata: dict[str, Any] = {"annotations": annotations}
    metadata |= {"name": name} if name else {"generateName": "app-"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec(app_env or {}),
    }


def pod_spec(app_env: dict[str, str]) -> dict[str, Any]:
    """An app container (UID 1001) and a worker (UID 1002): the agent runs as neither, and
    the pod's fsGroup lets both read the 0440 files. The app's own configuration says where
    the database and STS are; the credential files only say who it is."""
    env = [{"name": "SECRETS", "value": SECRETS}]
    env += [{"name": k, "value": v} for k, v in app_env.items()]
    return {
        "serviceAccountName": "workload",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": FS_GROUP},
        "containers": [
            {
                "name": "app",
                "image": "keyferry/e2e-app",
                "command": ["python", "-c", APP],
                "securityContext": {"runAsUser": APP_UID},
                "env": env,
            },
            {
                "name": "worker",
                "image": "keyferry/e2e-worker",
                "command": ["sleep", "3600"],
                "securityContext": {"runAsUser": OTHER_UID},
            },
        ],
    }


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "b"])
def test_a_pod_gets_a_dsn_a_kv_value_and_aws_keys_the_app_uses_and_sigterm_releases_them(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    postgres: PostgresServer,
    moto: MotoServer,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
    roles = {"db": "orders-db-ro", "cfg": "app-config", "s3": "s3-reader"}
    app_env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "PGDATABASE": "postgres",
        "STS_ENDPOINT": moto.endpoint,
        "REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": f"{SECRETS}/s3",
        "AWS_CONFIG_FILE": "/dev/null",
    }
    stored = create(hook.cluster, pod_body(f"orders-{RUN}", roles, app_env))
    runner = runner_for(hook.cluster, stored, tmp_path, runners)

    assert runner.probe(AGENT) == 1, "check passed before any file existed"
    agent = runner.start(AGENT)
    until_ready(runner, agent)
    rss = resident_kib(agent.pid)

    files = runner.volumes["keyferry-secrets"]
    for credential in roles:
        info = (files / credential).stat()
        assert stat.S_IMODE(info.st_mode) == 0o440
        assert (info.st_uid, info.st_gid) == (AGENT_UID, FS_GROUP)
    assert json.loads((files / "cfg").read_text()) == KV_VALUES
    assert "aws_session_token" in (files / "s3").read_text()

    app = runner.start("app")
    out, err = app.communicate(timeout=30)
    assert app.returncode == 0, err.decode()
    seen = json.loads(out)
    login = dsn_values((files / "db").read_text())
    assert seen["uid"] == APP_UID
    assert seen["user"] == login["user"]
    assert seen["config"] == KV_VALUES
    assert ":assumed-role/keyferry-e2e-reader/" in seen["arn"]

    leases = live_leases(broker, name, runner.name)
    assert sorted(lease.credential for lease in leases) == ["cfg", "db", "s3"]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    logs = log_lines(agent)
    released = {line["credential"] for line in logs if line["event"] == "lease.released"}
    assert released == {"cfg", "db", "s3"}
    for value in [login["password"], *KV_VALUES.values()]:
        assert all(value not in json.dumps(line) for line in logs), "a secret in the logs"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres.connect(login["user"], login["password"]).close()
    assert {lease.state for lease in live_leases_all(broker, name, runner.name)} == {
        LeaseState.REVOKED
    }
    print(f"\nagent resident memory on cluster {name}: {rss / 1024:.1f} MiB (VmRSS)")


@pytest.mark.parametrize("name", ["a", "b"])
def test_a_deployments_pod_with_a_generated_name_gets_a_dsn_that_logs_in(
    hooks: dict[str, Webhook],
    postgres: PostgresServer,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
    labels = {"app": f"orders-{RUN}"}
    template = pod_body()
    template["metadata"]["labels"] = labels
    del template["metadata"]["generateName"], template["apiVersion"], template["kind"]
    deployment = f"orders-{RUN}"
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }
    with hook.cluster.api_client() as api:
        apps(api).create_namespaced_deployment("orders", body)

        def a_pod() -> Any:
            selector = f"app={labels['app']}"
            pods = core(api).list_namespaced_pod("orders", label_selector=selector).items
            return pods[0] if pods else None

        found = eventually(a_pod, f"a pod of Deployment {deployment}")
    try:
        assert found.metadata.name.startswith(f"{deployment}-")
        runner = runner_for(
            hook.cluster,
            {"metadata": {"namespace": "orders", "name": found.metadata.name}},
            tmp_path,
            runners,
        )
        agent = runner.start(AGENT)
        until_ready(runner, agent)
        login = dsn_values((runner.volumes["keyferry-secrets"] / "db").read_text())
        postgres.connect(login["user"], login["password"]).close()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        with hook.cluster.api_client() as api:
            apps(api).delete_namespaced_deployment(deployment, "orders")


def test_a_pod_the_policy_does_not_allow_gets_no_credential_and_a_clear_error(
    hooks: dict[str, Webhook], tmp_path: Path, runners: list[PodRunner]
) -> None:
    hook = hooks["a"]
    namespace = f"payments-{RUN}"
    with hook.cluster.api_client() as api:
        ensure_namespace(api, namespace)
        core(api).patch_namespace(namespace, {"metadata": {"labels": dict([OPT_IN])}})
    stored = create(hook.cluster, pod_body("payments"), namespace)
    runner = runner_for(hook.cluster, stored, tmp_path, runners)
    agent = runner.start(AGENT)
    assert agent.wait(timeout=30) == 1
    (error,) = [line for line in log_lines(agent) if line["level"] == "error"]
    assert (error["event"], error["code"], error["reason"]) == (
        "agent.refused",
        "PERMISSION_DENIED",
        "POLICY_DENIED",
    )
    assert "orders-db-ro" in error["error"]
    assert not list(runner.volumes["keyferry-secrets"].iterdir())
    assert runner.probe(AGENT) == 1


def test_an_agent_restarted_five_times_holds_one_lease_per_credential(
    hooks: dict[str, Webhook], broker: BrokerThread, tmp_path: Path, runners: list[PodRunner]
) -> None:
    hook = hooks["b"]
    roles = {"db": "orders-db-ro", "cfg": "app-config"}
    runner = runner_for(
        hook.cluster, create(hook.cluster, pod_body(None, roles)), tmp_path, runners
    )
    passwords = set()
    for _ in range(6):  # the first start and five restarts after a crash (SIGKILL)
        agent = runner.start(AGENT)
        until_ready(runner, agent)
        passwords.add(
            dsn_values((runner.volumes["keyferry-secrets"] / "db").read_text())["password"]
        )
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    leases = live_leases(broker, "b", runner.name)
    assert sorted(lease.credential for lease in leases) == ["cfg", "db"]
    assert len(passwords) == 1


def test_without_the_token_volume_the_harness_cannot_run_the_agent(
    hooks: dict[str, Webhook],
    tmp_path: Path,
    runners: list[PodRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The harness reads the token only where the patch puts it: a patch without the token
    volume yields a pod the API server refuses (its mount names no volume), and a patch
    without volume and mount yields an agent that never gets a credential."""
    hook = hooks["a"]
    volumes = webhook_patch.volumes
    monkeypatch.setattr(
        webhook_patch,
        "volumes",
        lambda config: [v for v in volumes(config) if v["name"] != webhook_patch.TOKEN_VOLUME],
    )
    with pytest.raises(ApiException) as refused:
        create(hook.cluster, pod_body("no-token-volume"))
    assert refused.value.status == 422
    assert webhook_patch.TOKEN_VOLUME in str(refused.value.body)

    container = webhook_patch.agent_container

    def no_token_mount(*args: Any) -> dict[str, Any]:
        built = container(*args)
        built["volumeMounts"] = [
            m for m in built["volumeMounts"] if m["name"] != webhook_patch.TOKEN_VOLUME
        ]
        return built

    monkeypatch.setattr(webhook_patch, "agent_container", no_token_mount)
    runner = runner_for(hook.cluster, create(hook.cluster, pod_body("no-token")), tmp_path, runners)
    assert "keyferry-token" not in runner.volumes
    agent = runner.start(AGENT)
    with pytest.raises(AssertionError, match="never happened"):
        eventually(lambda: runner.probe(AGENT) == 0, "the probe passing", timeout=3)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    retries = [line for line in log_lines(agent) if line["event"] == "issue.retry"]
    assert retries
    assert "keyferry-token volume" in retries[0]["error"]


HUP_APP = """
import os, signal, time
def hup(*_):
    print("HUP " + open(os.environ["SECRETS"] + "/db").read().strip(), flush=True)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_rotation_swaps_the_file_signals_the_app_and_the_old_login_stops_working(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    postgres: PostgresServer,
    tmp_path: Path,
    runners: list[PodRunner],
    request: pytest.FixtureRequest,
) -> None:
    """Needs Broker.Watch and RotateLeases. While the broker answers Watch with UNIMPLEMENTED
    this is a strict xfail (it must fail then); once Watch is served it runs for real."""
    hook = hooks["a"]
    body = pod_body("rotating", {"db": "orders-db-ro"})
    body["metadata"]["annotations"]["keyferry.io/on-rotate"] = "signal:SIGHUP"
    body["spec"] |= {"shareProcessNamespace": True}
    body["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": APP_UID}
    app_spec = body["spec"]["containers"][0]
    app_spec["command"] = ["python", "-c", HUP_APP]
    body["spec"]["containers"] = [app_spec]
    runner = runner_for(hook.cluster, create(hook.cluster, body), tmp_path, runners)
    agent = runner.start(AGENT)
    until_ready(runner, agent)
    if _watch_code(broker, runner) == grpc.StatusCode.UNIMPLEMENTED:
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="Broker.Watch answers UNIMPLEMENTED")
        )
        raise AssertionError("Broker.Watch is not served: no rotation can reach the agent")
    app = runner.start("app")
    out = app.stdout
    assert out is not None
    assert out.readline().strip() == b"ready"
    files = runner.volumes["keyferry-secrets"]
    before = (files / "db").read_text()
    old = dsn_values(before)
    (lease,) = live_leases(broker, "a", runner.name)

    async def rotate() -> Any:
        async with broker.broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            return await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id]))

    rotated = asyncio.run(rotate())
    assert rotated.rotations[0].lease.generation == 2
    eventually(lambda: (files / "db").read_text() != before, "the file swapped")
    after = (files / "db").read_text()
    assert out.readline().decode().strip() == f"HUP {after.strip()}"
    new = dsn_values(after)
    postgres.connect(new["user"], new["password"]).close()

    def old_login_refused() -> bool:
        try:
            postgres.connect(old["user"], old["password"]).close()
        except psycopg.OperationalError:
            return True
        return False

    eventually(old_login_refused, "the old generation revoked after the Ack", timeout=20)
    assert stat.S_IMODE((files / "db").stat().st_mode) == 0o440
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    logs = log_lines(agent)
    (swap,) = [line for line in logs if line["event"] == "credential.rotated"]
    assert swap["generation"] == 2
    assert swap["signalled"] == [app.pid]


def _watch_code(broker: BrokerThread, runner: PodRunner) -> grpc.StatusCode | None:
    """What Watch answers this pod's token right now (None: the stream is open)."""
    token = (runner.volumes["keyferry-token"] / "token").read_text()
    credentials = grpc.ssl_channel_credentials(root_certificates=broker.broker.ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{broker.broker.port}", credentials) as channel:
        stub: Any = broker_pb2_grpc.BrokerServiceStub(channel)
        stream = stub.Watch(iter([]), metadata=(("authorization", f"Bearer {token}"),), timeout=2)
        try:
            next(iter(stream))
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return None if code == grpc.StatusCode.DEADLINE_EXCEEDED else code
        except StopIteration:
            return None
    return None
