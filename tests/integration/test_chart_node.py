"""`helm install` of charts/keyferry on cluster a's real node (issue 15).

The webhook: the chart's webhook Deployment runs as real pods from the webhook image the bed
built (imported into the node's containerd under the name the chart renders, pull policy
IfNotPresent), in a namespace that enforces Pod Security "restricted", with the chart's
Service, PodDisruptionBudget and NetworkPolicy; the API server calls the webhook through
its Service (the registration names the Service, not a URL) and a pod created in an
opted-in namespace comes back injected with the chart's agent image.

The broker: a second release with the broker enabled runs the broker image as a pod under
"restricted", with the chart's Services, probes and PDB; it reaches the bed's Vault and
PostgreSQL on the host through the node's bridge address, serves its admin listener (the
test registers cluster a through it, in-cluster: the `kubernetes` Service and a token of
the chart's broker ServiceAccount, bound by the chart's member RBAC) and its workload
listener behind the chart's Service, whose name the release's webhook hands to agents. An
injected pod on the node gets its database credential from that broker and logs in.

Cluster b (no node) gets the chart's member variant (the broker's ServiceAccount and RBAC,
no broker, no webhook) and is registered with the in-cluster broker too: its API server
listens on 127.0.0.1 only, so the broker pod reaches it through a relay on the bridge
address (tests/bed/relay.py), which its serving certificate names.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.identity.admin_pki import OPERATORS, create_ca
from injector.contract import AGENT_SPEC_ENV
from tests.bed.images import ImageBuilder
from tests.bed.kube import KubeCluster
from tests.bed.node import TOLERATION, Node
from tests.bed.pki import new_ca
from tests.bed.postgres import PostgresServer
from tests.bed.relay import Relay
from tests.bed.vault import VaultServer
from tests.conftest import need
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import HMAC_KEY, MOUNT, POLICY, TRANSIT_KEY, TRANSIT_MOUNT
from tests.scene.broker_thread import role_catalog
from tests.scene.engines import enable, enable_approle, mount_postgres
from tests.scene.kube_helpers import core, eventually
from tests.scene.nodepods import SECRETS, create, pod_body
from tests.scene.pods import AGENT, dsn_values
from tests.scene.workloads import ensure_namespace

pytestmark = pytest.mark.bed

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "keyferry"
POLICIES = REPO / "docs" / "examples" / "policies.cedar"
RUN = secrets.token_hex(3)
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
INJECTION = {"keyferry.io/injection": "enabled"}
INJECTION_OFF = dict.fromkeys(INJECTION)  # a Helm value of null removes the default's key


@dataclass
class Release:
    node: Node
    namespace: str
    name: str

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        where = ["-n", namespace or self.namespace] if namespace != "" else []
        found: dict[str, Any] = json.loads(
            self.node.cluster.kubectl("get", kind, name, *where, "-o", "json")
        )
        return found


@pytest.fixture(scope="module")
def release(node: Node) -> Iterator[Release]:
    images = {image.name: image for image in need(ImageBuilder().all)}
    node.load(images["webhook"].archive, images["webhook"].reference)
    cluster = node.cluster
    namespace, name = f"keyferry-{RUN}", "keyferry"
    with cluster.api_client() as api:
        body = {"metadata": {"name": namespace, "labels": RESTRICTED}}
        core(api).create_namespace(body)
    values = [
        f"--namespace={namespace}",
        "--set=broker.enabled=false",
        "--set=webhook.clusterName=a",
        f"--set=webhook.brokerAddress={node.address}:8443",
        f"--set-json=webhook.tolerations=[{json.dumps(TOLERATION)}]",
        "--set-string=webhook.namespaceSelector.matchLabels.keyferry\\.io/injection=enabled",
        "--wait",
        "--timeout=300s",
    ]
    cluster.helm("install", name, str(CHART), *values)
    try:
        yield Release(node, namespace, name)
    finally:
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait")
        with cluster.api_client() as api:
            core(api).delete_namespace(namespace)


def test_the_webhook_deployment_runs_as_real_pods_under_restricted(release: Release) -> None:
    deployment = release.get("deployment", f"{release.name}-webhook")
    assert deployment["status"]["readyReplicas"] == deployment["spec"]["replicas"]
    selector = "app.kubernetes.io/component=webhook"
    listing = release.node.cluster.kubectl(
        "get", "pods", "-n", release.namespace, "-l", selector, "-o", "json"
    )
    pods = json.loads(listing)["items"]
    assert pods
    for pod in pods:
        assert pod["spec"]["nodeName"] == release.node.name
        assert pod["status"]["phase"] == "Running"
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"]
        assert container["image"].endswith("keyferry/webhook:0.1.0")
    namespace = release.get("namespace", release.namespace, "")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_service_pdb_and_network_policy_are_in_place(release: Release) -> None:
    service = f"{release.name}-webhook"
    endpoints = release.get("endpoints", service)
    addresses = [a["ip"] for subset in endpoints.get("subsets", []) for a in subset["addresses"]]
    assert len(addresses) == release.get("deployment", service)["spec"]["replicas"]
    assert release.get("poddisruptionbudget", service)["spec"]["minAvailable"] == 1
    assert release.get("networkpolicy", service)["spec"]["podSelector"]["matchLabels"]


def test_the_api_server_calls_the_webhook_through_its_service(release: Release) -> None:
    cluster = release.node.cluster
    hook = release.get("mutatingwebhookconfiguration", f"{release.name}-webhook", "")
    client = hook["webhooks"][0]["clientConfig"]
    assert "url" not in client
    assert client["service"]["namespace"] == release.namespace
    opted = f"inject-{RUN}"
    with cluster.api_client() as api:
        core(api).create_namespace({"metadata": {"name": opted, "labels": INJECTION}})
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"app-{RUN}",
                "annotations": {"keyferry.io/inject": "true", "keyferry.io/role.db": "orders"},
            },
            "spec": {
                "securityContext": {"runAsUser": 1001},
                "containers": [{"name": "app", "image": "keyferry.invalid/app:1"}],
            },
        }

        def injected() -> dict[str, Any] | None:
            with cluster.api_client() as api:
                raw = core(api).create_namespaced_pod(
                    opted, pod, dry_run="All", _preload_content=False
                )
            spec: dict[str, Any] = json.loads(raw.data)["spec"]
            agents = [c for c in spec.get("initContainers") or [] if c["name"] == "keyferry-agent"]
            return agents[0] if agents else None

        agent = eventually(injected, "a pod injected by the chart's webhook pods")
        assert agent["image"].endswith("keyferry/agent:0.1.0")
        # Every webhook pod's log: the Service sent the admission to one of them.
        selector = "app.kubernetes.io/component=webhook"
        logs = cluster.kubectl("logs", "-n", release.namespace, "-l", selector, "--tail=200")
        assert f"app-{RUN}" in logs
    finally:
        with cluster.api_client() as api:
            core(api).delete_namespace(opted)


# ------------------------------------------------------------------ the broker on the node

BROKER_SECRET, WORKLOAD_TLS, ADMIN_TLS = "keyferry-broker", "broker-workload-tls", "broker-admin"
ADMIN_NAME = "keyferry-broker-admin"  # the admin certificate's name; the test dials the pod IP
ADMIN_PORT = 8444
T = TypeVar("T")


@dataclass
class BrokerRelease:
    """The chart with its broker, on the node; pods of `workloads` are injected by its
    webhook and get their credentials from its broker."""

    node: Node
    namespace: str
    name: str
    workloads: str
    admin: Path
    """The admin CA folder (`keyferry admin init`'s layout) with operator PLATFORM."""
    app_image: str

    @property
    def service(self) -> str:
        return f"{self.name}-broker"

    def broker_pod(self) -> dict[str, Any]:
        listing = self.node.cluster.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/component=broker",
            "-o",
            "json",
        )
        (pod,) = json.loads(listing)["items"]
        found: dict[str, Any] = pod
        return found


def _secret(cluster: Any, namespace: str, *args: str) -> None:
    cluster.kubectl("-n", namespace, "create", "secret", *args)


def _policies(workloads: str) -> str:
    """docs/examples' policies, and the same database permit for the test's namespace."""
    return POLICIES.read_text() + (
        '\n@id("chart-node-workloads-issue")\n'
        'permit (principal is Workload, action == Action::"issue", resource is Role)\n'
        f'when {{ principal.namespace == "{workloads}" && resource.backend == "database" }};\n'
    )


@pytest.fixture(scope="module")
def broker_release(
    node: Node,
    vault: VaultServer,
    postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerRelease]:
    images = {image.name: image for image in need(ImageBuilder().all)}
    for name in ("broker", "webhook", "agent", "app"):
        node.load(images[name].archive, images[name].reference)
    folder = tmp_path_factory.mktemp("chart-broker")
    root = vault.client()
    role_id, secret_id = enable_approle(root, "keyferry-broker", POLICY.read_text(), "chart-broker")
    mount_postgres(root, postgres, MOUNT, "ro")
    enable(root, "transit", TRANSIT_MOUNT)
    root.secrets.transit.create_key(name=TRANSIT_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT)

    cluster = node.cluster
    namespace, name, workloads = f"keyferry-broker-{RUN}", "kf", f"chart-{RUN}"
    service = f"{name}-broker"
    opt_in = {f"keyferry.test/chart-broker-{RUN}": "on"}
    with cluster.api_client() as api:
        core(api).create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED}})
        ensure_namespace(api, workloads)
        core(api).patch_namespace(workloads, {"metadata": {"labels": opt_in}})
    # The workload listener's certificate, for the name the chart's webhook hands to agents.
    tls_ca = new_ca(folder, "broker-ca", "keyferry chart-node broker CA")
    names = (f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")
    workload = tls_ca.issue(folder, "broker-workload", names[0], dns_names=names)
    _secret(
        cluster, namespace, "tls", WORKLOAD_TLS, f"--cert={workload.cert}", f"--key={workload.key}"
    )
    admin = folder / "admin"
    admin_ca = create_ca(admin)
    server = admin_ca.issue_server([ADMIN_NAME])
    admin_ca.issue_operator(PLATFORM, ["platform"])
    _secret(
        cluster,
        namespace,
        "generic",
        ADMIN_TLS,
        f"--from-file=broker-admin.crt={server.cert_path}",
        f"--from-file=broker-admin.key={server.key_path}",
        f"--from-file=ca.crt={admin_ca.cert_path}",
    )
    _secret(
        cluster,
        namespace,
        "generic",
        BROKER_SECRET,
        f"--from-literal=vault-secret-id={secret_id}",
        f"--from-literal=audit-hmac-key={HMAC_KEY}",
        f"--from-literal=sealing-key={base64.b64encode(os.urandom(32)).decode()}",
    )
    roles = yaml.safe_load(role_catalog(folder, postgres, node.address).read_text())
    values = {
        "fullnameOverride": name,  # objects kf-broker, kf-webhook: beside the other release
        "broker": {
            "replicas": 1,
            "config": {
                "vault": {"addr": vault.node_addr, "approle": {"role_id": role_id}},
                "audit": {"transit_mount": TRANSIT_MOUNT, "transit_key": TRANSIT_KEY},
                # One operator registers clusters a and b here; the two-operator default
                # is tested in tests/security/test_cluster_approval.py.
                "cluster_registration": {"approval": "single"},
            },
            "existingSecret": BROKER_SECRET,
            "policies": _policies(workloads),
            "roles": roles,
            "tls": {"workloadSecret": WORKLOAD_TLS, "adminSecret": ADMIN_TLS},
            "tolerations": [TOLERATION],
        },
        "webhook": {
            "clusterName": "a",
            "replicas": 1,
            "brokerCA": {"pem": tls_ca.pem().decode()},
            # Only this test's label: null drops the chart's default keyferry.io/injection,
            # which the webhook-only release above selects by.
            "namespaceSelector": {"matchLabels": {**INJECTION_OFF, **opt_in}},
            "tolerations": [TOLERATION],
        },
        # The broker's own access to cluster a (pods, TokenReviews, JWKS), as in a member.
        "memberRBAC": {"enabled": True},
    }
    values_file = folder / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.helm(
        "install",
        name,
        str(CHART),
        f"--namespace={namespace}",
        f"--values={values_file}",
        "--wait",
        "--timeout=300s",
    )
    try:
        yield BrokerRelease(node, namespace, name, workloads, admin, images["app"].reference)
    finally:
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait")
        with cluster.api_client() as api:
            core(api).delete_namespace(workloads)
            core(api).delete_namespace(namespace)
        root.sys.disable_secrets_engine(MOUNT)


async def _admin(release: BrokerRelease, call: Callable[[Any], Awaitable[T]]) -> T:
    """`call` on the ClustersService of the broker pod's admin listener, as PLATFORM (the
    test dials the pod's address; the certificate names ADMIN_NAME)."""
    pod_ip = release.broker_pod()["status"]["podIP"]
    operators = release.admin / OPERATORS
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(release.admin / "ca.crt").read_bytes(),
        private_key=(operators / f"{PLATFORM}.key").read_bytes(),
        certificate_chain=(operators / f"{PLATFORM}.crt").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", ADMIN_NAME)]
    async with grpc.aio.secure_channel(f"{pod_ip}:{ADMIN_PORT}", credentials, options) as channel:
        return await call(clusters_pb2_grpc.ClustersServiceStub(channel))


def _register(
    request: clusters_pb2.RegisterClusterRequest,
) -> Callable[[Any], Awaitable[Any]]:
    async def call(stub: Any) -> Any:
        return await stub.RegisterCluster(request, timeout=60)

    return call


def _registration(
    cluster: KubeCluster, namespace: str, account: str, server: str
) -> clusters_pb2.RegisterClusterRequest:
    """Cluster `cluster` at `server` (as the broker pod reaches it) with a token of the
    chart's broker ServiceAccount `account`."""
    where = ("-n", namespace)
    token = cluster.kubectl(*where, "create", "token", account, "--duration=1h").strip()
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    ca_pem = Path(kubeconfig["clusters"][0]["cluster"]["certificate-authority"]).read_text()
    return clusters_pb2.RegisterClusterRequest(
        name=cluster.name,
        server=server,
        ca_pem=ca_pem,
        credential=clusters_pb2.ClusterCredential(bearer_token=token),
        issuer=cluster.issuer,
    )


@pytest.fixture(scope="module")
def registered(
    broker_release: BrokerRelease, kube_clusters: dict[str, KubeCluster]
) -> Iterator[BrokerRelease]:
    """Cluster a registered with the in-cluster broker as a pod reaches it (the `kubernetes`
    Service by name); cluster b with the chart's member variant installed, reached through
    a relay on the node's bridge address (b binds 127.0.0.1 only; its certificate names the
    bridge address too)."""
    release = broker_release
    member = kube_clusters["b"]
    namespace = f"keyferry-member-{RUN}"
    values = [
        f"--namespace={namespace}",
        "--create-namespace",
        "--set=broker.enabled=false",
        "--set=webhook.enabled=false",
        "--set=memberRBAC.enabled=true",
        f"--set=fullnameOverride={release.name}",  # the ServiceAccount kf-broker, as on a
        "--wait",
    ]
    member.helm("install", release.name, str(CHART), *values)
    try:
        with Relay(release.node.address, member.port) as relay:
            requests = [
                _registration(
                    release.node.cluster,
                    release.namespace,
                    release.service,
                    "https://kubernetes.default.svc",
                ),
                _registration(
                    member, namespace, release.service, f"https://{relay.host}:{relay.port}"
                ),
            ]
            for request in requests:
                asyncio.run(_admin(release, _register(request)))
            yield release
    finally:
        member.helm("uninstall", release.name, f"--namespace={namespace}", "--wait")
        member.kubectl("delete", "namespace", namespace, "--wait=false")


def test_the_in_cluster_broker_registers_cluster_a_and_the_member_b(
    registered: BrokerRelease,
) -> None:
    listed = asyncio.run(
        _admin(registered, lambda stub: stub.ListClusters(clusters_pb2.ListClustersRequest()))
    )
    clusters = {c.name: c for c in listed.clusters}
    assert sorted(clusters) == ["a", "b"]
    assert clusters["a"].server == "https://kubernetes.default.svc"
    for cluster in clusters.values():
        assert cluster.key_ids  # its JWKS, fetched by the broker pod from that API server
        assert cluster.HasField("last_contact")


def test_the_broker_deployment_runs_as_a_real_pod_under_restricted(
    broker_release: BrokerRelease,
) -> None:
    pod = broker_release.broker_pod()
    assert pod["spec"]["nodeName"] == broker_release.node.name
    (container,) = pod["status"]["containerStatuses"]
    assert container["ready"]
    assert container["image"].endswith("keyferry/broker:0.1.0")
    probes = pod["spec"]["containers"][0]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(probes)
    cluster = broker_release.node.cluster
    where = ("-n", broker_release.namespace)
    service = json.loads(
        cluster.kubectl("get", "endpoints", broker_release.service, *where, "-o", "json")
    )
    addresses = [a["ip"] for subset in service["subsets"] for a in subset["addresses"]]
    assert addresses == [pod["status"]["podIP"]]
    pdb = json.loads(cluster.kubectl("get", "pdb", broker_release.service, *where, "-o", "json"))
    assert pdb["spec"]["maxUnavailable"] == 1


def test_an_injected_pod_gets_its_credential_from_the_in_cluster_broker(
    registered: BrokerRelease,
) -> None:
    cluster = registered.node.cluster
    body = pod_body(f"chart-app-{RUN}", registered.app_image, {"db": "orders-db-ro"})

    def mutated() -> bool:
        with cluster.api_client() as api:
            raw = core(api).create_namespaced_pod(
                registered.workloads, body, dry_run="All", _preload_content=False
            )
        containers = json.loads(raw.data)["spec"].get("initContainers") or []
        return any(c["name"] == AGENT for c in containers)

    eventually(mutated, "the release's webhook injecting pods of its opted-in namespace")
    pod = create(cluster, registered.workloads, body)
    try:
        pod.wait_ready()
        spec = next(
            json.loads(env["value"])
            for c in pod.stored()["spec"]["initContainers"]
            if c["name"] == AGENT
            for env in c["env"]
            if env["name"] == AGENT_SPEC_ENV
        )
        assert spec["broker_address"] == f"{registered.service}.{registered.namespace}.svc:8443"
        user = pod.sh(f'psql "$(cat {SECRETS}/db)" -Atc "select current_user"').strip()
        assert user == dsn_values(pod.secret("db"))["user"]
    finally:
        pod.delete()
