"""The agent end to end: pods created through the real API servers of clusters a and b,
mutated by the real webhook, and the injected agent run by the kubelet harness (kubelet.py)
from the mutated pod's JSON alone, against a broker on the bed's Vault, PostgreSQL and moto.

Every pod here is a Pod object in a real API server; its containers run as local processes
in their own mount namespaces, as the UIDs the pod spec says. The app container of the test
pods is a small Python program that logs in with the DSN file alone (the role carries the
database's host, port and name; the app has no PG* variable), reads the KV value, calls STS
with the aws-credentials file and checks the PEM bundle with `cryptography`, as a UID other
than the agent's (fsGroup case). Every test runs in both clusters.

Why the harness here: cluster b has no node (one kube-proxy per machine; the clusters share
a service range), so its pods can only run this way. Cluster a has a real node, and the
cases it can run are in test_node_e2e.py (admission, sidecar order, psql, openssl, the aws
CLI, rotation with SIGHUP, kubectl delete, init-only Jobs, API tokens); these cases run on
cluster a's harness too, so both clusters are compared with one implementation, and some
(an agent restarted five times, a pod without its token volume) drive the agent's process
directly, which a kubelet does not let a test do.
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

import hvac
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.store import LeaseState, Selector
from injector.webhook import patch as webhook_patch
from tests.bed.kube import KubeCluster
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker_thread import (
    KV_VALUES,
    BrokerThread,
    Webhook,
    mount_internal_tls,
    mount_kv,
    mount_s3_reader,
    serving,
    webhooks,
)
from tests.scene.kube_helpers import apps, core, eventually
from tests.scene.kubelet import PodRunner, resident_kib
from tests.scene.pods import (
    AGENT,
    create,
    dsn_values,
    live_leases,
    live_leases_all,
    log_lines,
    mutated,
    read,
    runner_for,
    until_ready,
    vault_leases,
)
from tests.scene.workloads import ensure_namespace

pytestmark = pytest.mark.bed
NAMES = ("a", "b")
RUN = secrets.token_hex(3)
OPT_IN = (f"keyferry.test/e2e-{RUN}", "on")
APP_UID, OTHER_UID, FS_GROUP = 1001, 1002, 3000
ROTATING_UID = 40000 + secrets.randbelow(10000)
AGENT_UID = 65532  # the webhook's agent.run_as_user: the app containers' UIDs differ
SECRETS = "/keyferry/secrets"
EVERYTHING = {"db": "orders-db-ro", "cfg": "app-config", "s3": "s3-reader", "tls": "internal-tls"}

APP = """
import json, os, re, boto3, psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
d = os.environ["SECRETS"]
out = {"uid": os.getuid(), "pg_env": sorted(k for k in os.environ if k.startswith("PG"))}
with psycopg.connect(open(f"{d}/db").read()) as conn:
    out["user"] = conn.execute("select current_user").fetchone()[0]
out["config"] = json.load(open(f"{d}/cfg"))
sts = boto3.client("sts", endpoint_url=os.environ["STS_ENDPOINT"], region_name=os.environ["REGION"])
out["arn"] = sts.get_caller_identity()["Arn"]
bundle = open(f"{d}/tls", "rb").read()
pem = re.findall(rb"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----\\n", bundle, re.S)
key = serialization.load_pem_private_key(next(b for b in pem if b"PRIVATE KEY" in b), None)
leaf, *chain = [x509.load_pem_x509_certificate(b) for b in pem if b"CERTIFICATE" in b]
raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
assert key.public_key().public_bytes(*raw) == leaf.public_key().public_bytes(*raw)
leaf.verify_directly_issued_by(chain[-1])
out["cn"] = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
out["ca"] = chain[-1].fingerprint(hashes.SHA256()).hex()
print(json.dumps(out))
"""


# --- the scene ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def internal_ca(vault: VaultServer) -> x509.Certificate:
    """The CA of role internal-tls's PKI mount, as Vault reports it."""
    return x509.load_pem_x509_certificate(mount_internal_tls(vault.client()).encode())


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    postgres: PostgresServer,
    moto: MotoServer,
    kube_clusters: dict[str, KubeCluster],
    internal_ca: x509.Certificate,
) -> Iterator[BrokerThread]:
    root: hvac.Client = vault.client()
    mount_kv(root)
    mount_s3_reader(root, moto)
    folder = tmp_path_factory.mktemp("e2e-broker")
    policies = (Path(__file__).with_name("policies.cedar"),)
    with serving(folder, vault, postgres, kube_clusters, policies=policies) as running:
        yield running


@pytest.fixture(scope="module")
def hooks(
    broker: BrokerThread,
    kube_clusters: dict[str, KubeCluster],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Webhook]]:
    clusters = [kube_clusters[name] for name in NAMES]
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
    service_account: str = "workload",
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
        "spec": pod_spec(app_env or {}, service_account),
    }


def pod_spec(app_env: dict[str, str], service_account: str = "workload") -> dict[str, Any]:
    """An app container (UID 1001) and a worker (UID 1002): the agent runs as neither, and
    the pod's fsGroup lets both read the 0440 files. The app's own configuration says where
    STS is; the database's address comes with the credential (the role's connection)."""
    env = [{"name": "SECRETS", "value": SECRETS}]
    env += [{"name": k, "value": v} for k, v in app_env.items()]
    return {
        "serviceAccountName": service_account,
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


def everything_body(moto: MotoServer, name: str | None = None) -> dict[str, Any]:
    app_env = {
        "STS_ENDPOINT": moto.endpoint,
        "REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": f"{SECRETS}/s3",
        "AWS_CONFIG_FILE": "/dev/null",
    }
    body = pod_body(name, EVERYTHING, app_env)
    del body["spec"]["automountServiceAccountToken"]  # the API token: the app's, not the agent's
    return body


def app_uses_everything(
    runner: PodRunner, postgres: PostgresServer, internal_ca: x509.Certificate
) -> dict[str, str]:
    """Run the app container (UID 1001) on the agent's files; check what it saw; the DSN."""
    files = runner.volumes["keyferry-secrets"]
    for credential in EVERYTHING:
        info = (files / credential).stat()
        assert stat.S_IMODE(info.st_mode) == 0o440
        assert (info.st_uid, info.st_gid) == (AGENT_UID, FS_GROUP)
    login = dsn_values((files / "db").read_text())
    assert (login["host"], login["port"], login["dbname"]) == (
        "127.0.0.1",
        str(postgres.port),
        "postgres",
    ), "the DSN does not carry the role's connection"

    app = runner.start("app")
    out, err = app.communicate(timeout=60)
    assert app.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen["uid"] == APP_UID
    assert seen["pg_env"] == [], "the app must log in with the DSN file alone"
    assert seen["user"] == login["user"]
    assert seen["config"] == KV_VALUES
    assert ":assumed-role/keyferry-e2e-reader/" in seen["arn"]
    assert seen["cn"] == f"{runner.name}.{runner.namespace}.svc"
    assert seen["ca"] == internal_ca.fingerprint(hashes.SHA256()).hex()
    return login


def described(pid: int) -> str:
    """What a signalled process was (its command line and parent), to tell a stray one apart."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except OSError:
        return f"{pid}: gone"
    return f"{pid}: {argv!r}, parent {parent}"


def store_leases(broker: BrokerThread, cluster: str) -> set[str]:
    store = broker.broker.store()
    try:
        selector = Selector(cluster=cluster, states=frozenset(LeaseState))
        return {lease.id for lease in store.leases.list_by_selector(selector)}
    finally:
        store.close()


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_pod_gets_a_dsn_kv_aws_keys_and_a_certificate_and_sigterm_releases_them(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    postgres: PostgresServer,
    moto: MotoServer,
    internal_ca: x509.Certificate,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
    stored = create(hook.cluster, everything_body(moto, f"orders-{RUN}"))
    runner = runner_for(hook.cluster, stored, tmp_path, runners)

    assert runner.probe(AGENT) == 1, "check passed before any file existed"
    agent = runner.start(AGENT)
    until_ready(runner, agent)
    rss = resident_kib(agent.pid)
    login = app_uses_everything(runner, postgres, internal_ca)
    api_token = "/var/run/secrets/kubernetes.io/serviceaccount"
    for container, listing in (("app", "token"), (AGENT, "")):
        looked = runner.start(container, ["ls", api_token])
        seen, _ = looked.communicate(timeout=30)
        assert seen.decode().split() == listing.split(), f"{container} sees {seen!r}"
    files = runner.volumes["keyferry-secrets"]
    assert json.loads((files / "cfg").read_text()) == KV_VALUES
    assert "aws_session_token" in (files / "s3").read_text()

    leases = live_leases(broker, name, runner.name)
    assert sorted(lease.credential for lease in leases) == sorted(EVERYTHING)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    logs = log_lines(agent)
    released = {line["credential"] for line in logs if line["event"] == "lease.released"}
    assert released == set(EVERYTHING)
    for value in [login["password"], *KV_VALUES.values()]:
        assert all(value not in json.dumps(line) for line in logs), "a secret in the logs"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres.connect(login["user"], login["password"]).close()
    assert {lease.state for lease in live_leases_all(broker, name, runner.name)} == {
        LeaseState.REVOKED
    }
    print(f"\nagent resident memory on cluster {name}: {rss / 1024:.1f} MiB (VmRSS)")


@pytest.mark.parametrize("name", NAMES)
def test_a_deployments_pod_with_a_generated_name_gets_every_credential(
    hooks: dict[str, Webhook],
    postgres: PostgresServer,
    moto: MotoServer,
    internal_ca: x509.Certificate,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
    labels = {"app": f"orders-{RUN}"}
    template = everything_body(moto)
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
        app_uses_everything(runner, postgres, internal_ca)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        with hook.cluster.api_client() as api:
            apps(api).delete_namespaced_deployment(deployment, "orders")


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_annotation_is_refused_by_the_api_server_with_the_webhooks_message(
    hooks: dict[str, Webhook], name: str
) -> None:
    hook = hooks[name]
    body = pod_body(f"bad-{RUN}")
    body["metadata"]["annotations"]["keyferry.io/format.db"] = "yaml"
    with pytest.raises(ApiException) as refused:
        create(hook.cluster, body)
    assert refused.value.status == 400
    message = json.loads(refused.value.body or "{}")["message"]
    assert "keyferry.io/format.db" in message
    assert "write one of: env, json, dsn, pgpass, aws-credentials, pem" in message
    with pytest.raises(ApiException) as missing:
        read(hook.cluster, "orders", f"bad-{RUN}")
    assert missing.value.status == 404


@pytest.mark.parametrize("name", NAMES)
def test_an_unannotated_pod_and_a_kube_system_pod_are_untouched(
    hooks: dict[str, Webhook], name: str
) -> None:
    hook = hooks[name]
    plain = pod_body(f"plain-{RUN}")
    plain["metadata"]["annotations"] = {}
    stored = create(hook.cluster, plain)
    assert stored["spec"].get("initContainers") is None
    assert not [v for v in stored["spec"].get("volumes") or [] if v["name"].startswith("keyferry")]
    for container in stored["spec"]["containers"]:
        assert not container.get("volumeMounts")
    (called,) = [a for a in hook.seen if a.name == f"plain-{RUN}"]
    assert (called.allowed, called.patched) == (True, False)

    label = {"metadata": {"labels": {OPT_IN[0]: OPT_IN[1]}}}
    with hook.cluster.api_client() as api:
        core(api).patch_namespace("kube-system", label)  # it even opts in: still excluded
        try:
            system = pod_body(f"system-{RUN}", service_account="default")
            stored = create(hook.cluster, system, "kube-system")
            assert not mutated(stored)
            assert stored["spec"].get("volumes") is None
            core(api).delete_namespaced_pod(f"system-{RUN}", "kube-system")
        finally:
            core(api).patch_namespace("kube-system", {"metadata": {"labels": {OPT_IN[0]: None}}})
    assert not [a for a in hook.seen if a.namespace == "kube-system"]


@pytest.mark.parametrize("name", NAMES)
def test_a_server_side_dry_run_is_mutated_and_creates_no_lease(
    hooks: dict[str, Webhook], broker: BrokerThread, vault: VaultServer, name: str
) -> None:
    hook = hooks[name]
    root = vault.client()
    in_vault, in_store = vault_leases(root), store_leases(broker, name)
    pod = f"dry-{RUN}"
    with hook.cluster.api_client() as api:
        raw = core(api).create_namespaced_pod(
            "orders", pod_body(pod, EVERYTHING), dry_run="All", _preload_content=False
        )
        answered = json.loads(raw.data)
    assert mutated(answered), "the dry run was not sent through the webhook"
    (call,) = [a for a in hook.seen if a.name == pod]
    assert call.dry_run
    assert call.patched
    with pytest.raises(ApiException) as missing:
        read(hook.cluster, "orders", pod)
    assert missing.value.status == 404
    assert vault_leases(root) <= in_vault
    assert store_leases(broker, name) <= in_store
    assert not live_leases_all(broker, name, pod)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("who", ["namespace", "service-account"])
def test_a_pod_the_policy_does_not_allow_gets_no_credential_and_a_clear_error(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
    who: str,
) -> None:
    hook = hooks[name]
    if who == "namespace":  # no permit for namespace payments-*
        namespace, body = f"payments-{RUN}", pod_body(f"payments-{RUN}")
        with hook.cluster.api_client() as api:
            ensure_namespace(api, namespace)
            core(api).patch_namespace(namespace, {"metadata": {"labels": dict([OPT_IN])}})
    else:  # tests/e2e/policies.cedar forbids the service account "untrusted"
        namespace, body = "orders", pod_body(f"untrusted-{RUN}", service_account="untrusted")
        with hook.cluster.api_client() as api:
            accounts = core(api).list_namespaced_service_account(namespace).items
            if "untrusted" not in {a.metadata.name for a in accounts}:
                account = k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="untrusted"))
                core(api).create_namespaced_service_account(namespace, account)
    stored = create(hook.cluster, body, namespace)
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
    assert not live_leases_all(broker, name, runner.name)


@pytest.mark.parametrize("name", NAMES)
def test_an_agent_restarted_five_times_holds_one_lease_per_credential(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
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
    leases = live_leases_all(broker, name, runner.name)
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
    assert agent.stderr is not None
    while (first := json.loads(agent.stderr.readline()))["event"] != "issue.retry":
        pass  # the agent is up (its SIGTERM handler too) and cannot read a token
    assert "keyferry-token volume" in first["error"]
    with pytest.raises(AssertionError, match="never happened"):
        eventually(lambda: runner.probe(AGENT) == 0, "the probe passing", timeout=3)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    assert not [line for line in log_lines(agent) if line["event"] == "credential.written"]


HUP_APP = """
import os, signal, time
def hup(*_):
    print("HUP " + open(os.environ["SECRETS"] + "/db").read().strip(), flush=True)
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize("name", NAMES)
def test_a_rotation_swaps_the_file_signals_the_app_and_the_old_login_stops_working(
    hooks: dict[str, Webhook],
    broker: BrokerThread,
    postgres: PostgresServer,
    tmp_path: Path,
    runners: list[PodRunner],
    name: str,
) -> None:
    hook = hooks[name]
    body = pod_body(f"rotating-{RUN}", {"db": "orders-db-ro"})
    body["metadata"]["annotations"]["keyferry.io/on-rotate"] = "signal:SIGHUP"
    body["spec"] |= {"shareProcessNamespace": True}
    # The harness shares the host's PID namespace: a UID of this run only, so no other
    # process on the machine (another test run's app) looks like this pod's app.
    body["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": ROTATING_UID}
    app_spec = body["spec"]["containers"][0]
    app_spec["command"] = ["python", "-c", HUP_APP]
    body["spec"]["containers"] = [app_spec]
    runner = runner_for(hook.cluster, create(hook.cluster, body), tmp_path, runners)
    agent = runner.start(AGENT)
    until_ready(runner, agent)
    app = runner.start("app")
    out = app.stdout
    assert out is not None
    assert out.readline().strip() == b"ready"
    files = runner.volumes["keyferry-secrets"]
    before = (files / "db").read_text()
    old = dsn_values(before)
    inode = (files / "db").stat().st_ino
    (lease,) = live_leases(broker, name, runner.name)

    async def rotate() -> Any:
        async with broker.broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            return await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id]))

    rotated = asyncio.run(rotate())
    assert rotated.rotations[0].lease.generation == 2
    eventually(lambda: (files / "db").read_text() != before, "the file swapped")
    after = (files / "db").read_text()
    assert (files / "db").stat().st_ino != inode, "not swapped by rename"
    assert out.readline().decode().strip() == f"HUP {after.strip()}"
    new = dsn_values(after)
    psycopg.connect(after).close()  # the new DSN alone logs in

    def old_login_refused() -> bool:
        try:
            psycopg.connect(before).close()
        except psycopg.OperationalError:
            return True
        return False

    eventually(old_login_refused, "the old generation revoked after the Ack", timeout=20)
    assert new["user"] != old["user"]
    assert stat.S_IMODE((files / "db").stat().st_mode) == 0o440
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    logs = log_lines(agent)
    (swap,) = [line for line in logs if line["event"] == "credential.rotated"]
    assert swap["generation"] == 2
    assert swap["signalled"] == [app.pid], [described(pid) for pid in swap["signalled"]]
