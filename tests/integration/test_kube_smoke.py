"""Smoke tests that prove the bed's Kubernetes clusters are real and really separate.

Clusters (tests/conftest.py): a has its own issuer; b and c share the issuer string real
fleets share. Pods are stored but never run: the clusters have no nodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiException

from tests.bed import Bed
from tests.bed.etcd import ETCD_VERSION
from tests.bed.gobuild import HELM_VERSION, K8S_VERSION
from tests.bed.kube import ADMIN_USER, CHARTS, SHARED_ISSUER, KubeCluster, ToolFailed
from tests.scene.kube_helpers import (
    BoundToken,
    admission,
    apps,
    core,
    eventually,
    mint_bound_token,
    new_namespace,
    pod,
    review,
    verify,
)
from tests.scene.webhook_probe import LABEL_KEY, LABEL_VALUE, WebhookProbe, start_webhook_probe

pytestmark = pytest.mark.bed
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def tokens(kube_clusters: dict[str, KubeCluster]) -> dict[str, BoundToken]:
    """One pod-bound token per cluster, minted once for the read-only token tests."""
    return {name: mint_bound_token(cluster, "token") for name, cluster in kube_clusters.items()}


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookProbe]:
    probe = start_webhook_probe(tmp_path_factory.mktemp("webhook"))
    yield probe
    probe.stop()


def test_versions(bed: Bed, kube_cluster: KubeCluster) -> None:
    cluster = kube_cluster
    versions = json.loads(cluster.kubectl("version", "--output=json"))
    assert versions["clientVersion"]["gitVersion"] == K8S_VERSION
    assert versions["serverVersion"]["gitVersion"] == K8S_VERSION
    assert cluster.helm("version", "--template={{.Version}}") == HELM_VERSION
    assert bed.etcd().version() == ETCD_VERSION


def test_clusters_keep_their_data_apart(kube_clusters: dict[str, KubeCluster]) -> None:
    a, b = kube_clusters["a"], kube_clusters["b"]
    assert len({c.etcd_prefix for c in kube_clusters.values()}) == len(kube_clusters)
    with a.api_client() as api:
        namespace = new_namespace(api, "only-in-a")
    with b.api_client() as api, pytest.raises(ApiException) as missing:
        core(api).read_namespace(namespace)
    assert missing.value.status == 404


def test_issuers(kube_clusters: dict[str, KubeCluster]) -> None:
    a, b, c = (kube_clusters[n] for n in NAMES)
    assert b.issuer == c.issuer == SHARED_ISSUER
    assert a.issuer == a.server != SHARED_ISSUER
    discovery = json.loads(a.get("/.well-known/openid-configuration"))
    assert discovery["issuer"] == a.issuer
    assert discovery["jwks_uri"] == f"{a.server}/openid/v1/jwks"
    # Same issuer string, different signing keys: the issuer alone cannot tell b from c.
    kids = {name: {k["kid"] for k in kube_clusters[name].jwks()["keys"]} for name in NAMES}
    assert not kids["a"] & kids["b"]
    assert not kids["b"] & kids["c"]


def test_kubectl_and_python_client_share_the_kubeconfig(kube_cluster: KubeCluster) -> None:
    with kube_cluster.api_client() as api:
        namespace = new_namespace(api, "kubeconfig")
    listed = json.loads(kube_cluster.kubectl("get", "namespace", namespace, "--output=json"))
    assert listed["metadata"]["name"] == namespace
    whoami = json.loads(kube_cluster.kubectl("auth", "whoami", "--output=json"))
    assert whoami["status"]["userInfo"]["username"] == ADMIN_USER
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]


@pytest.mark.parametrize("name", NAMES)
def test_namespace_gets_default_service_account(
    kube_clusters: dict[str, KubeCluster], name: str
) -> None:
    cluster = kube_clusters[name]
    with cluster.api_client() as api:
        v1 = core(api)
        namespace = new_namespace(api, "sa")

        def default_account() -> bool:
            accounts = v1.list_namespaced_service_account(namespace).items
            return any(sa.metadata.name == "default" for sa in accounts)

        eventually(default_account, f"the default ServiceAccount in {namespace} on {name}")
        root_ca = eventually(
            lambda: _config_map(v1, namespace, "kube-root-ca.crt"),
            f"kube-root-ca.crt in {namespace} on {name}",
        )
        assert root_ca.data["ca.crt"] == cluster.ca_path.read_text()
        v1.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="extra"))
        )
        created = v1.create_namespaced_pod(namespace, pod("plain", "extra"))
        assert created.spec.service_account_name == "extra"
        assert created.spec.node_name is None
        # The ServiceAccount admission plugin adds the projected token volume.
        assert any(v.projected for v in created.spec.volumes)


@pytest.mark.parametrize("name", NAMES)
def test_deployment_creates_pod_with_generated_name(
    kube_clusters: dict[str, KubeCluster], name: str
) -> None:
    with kube_clusters[name].api_client() as api:
        namespace = new_namespace(api, "deploy")
        labels = {"app": "smoke"}
        apps(api).create_namespaced_deployment(
            namespace,
            k8s.V1Deployment(
                metadata=k8s.V1ObjectMeta(name="smoke"),
                spec=k8s.V1DeploymentSpec(
                    replicas=1,
                    selector=k8s.V1LabelSelector(match_labels=labels),
                    template=k8s.V1PodTemplateSpec(
                        metadata=k8s.V1ObjectMeta(labels=labels),
                        spec=pod("unused").spec,
                    ),
                ),
            ),
        )
        v1 = core(api)
        pods = eventually(
            lambda: v1.list_namespaced_pod(namespace, label_selector="app=smoke").items,
            f"a pod of Deployment smoke in {namespace} on {name}",
        )
    assert len(pods) == 1
    made = pods[0].metadata
    assert made.generate_name.startswith("smoke-")
    assert made.name.startswith(made.generate_name)
    assert len(made.name) > len(made.generate_name)
    assert [ref.kind for ref in made.owner_references] == ["ReplicaSet"]


@pytest.mark.parametrize("name", NAMES)
def test_bound_token_verifies_with_own_jwks(
    kube_clusters: dict[str, KubeCluster], tokens: dict[str, BoundToken], name: str
) -> None:
    cluster, bound = kube_clusters[name], tokens[name]
    claims = verify(bound.token, cluster.jwks(), bound.audience, cluster.issuer)
    assert claims["sub"] == f"system:serviceaccount:{bound.namespace}:{bound.service_account}"
    assert claims["aud"] == [bound.audience]
    identity = claims["kubernetes.io"]
    assert identity["namespace"] == bound.namespace
    assert identity["pod"] == {"name": bound.pod, "uid": bound.pod_uid}
    assert identity["serviceaccount"]["name"] == bound.service_account
    with pytest.raises(jwt.InvalidAudienceError):
        verify(bound.token, cluster.jwks(), "keyferry:elsewhere", cluster.issuer)

    status = review(cluster, bound.token, bound.audience)
    assert status.authenticated is True
    assert status.user.username == claims["sub"]
    assert status.user.extra["authentication.kubernetes.io/pod-name"] == [bound.pod]
    assert status.user.extra["authentication.kubernetes.io/pod-uid"] == [bound.pod_uid]


@pytest.mark.parametrize(
    ("issued_by", "checked_by"),
    [("a", "b"), ("b", "a"), ("b", "c"), ("c", "b")],
    ids=[
        "distinct-issuers-a-to-b",
        "distinct-issuers-b-to-a",
        "shared-issuer-b-to-c",
        "shared-issuer-c-to-b",
    ],
)
def test_other_clusters_reject_token(
    kube_clusters: dict[str, KubeCluster],
    tokens: dict[str, BoundToken],
    issued_by: str,
    checked_by: str,
) -> None:
    bound, other = tokens[issued_by], kube_clusters[checked_by]
    jwks = other.jwks()
    with pytest.raises(jwt.InvalidKeyError):
        verify(bound.token, jwks, bound.audience, kube_clusters[issued_by].issuer)
    # Not just an unknown kid: no key of the other cluster verifies the signature.
    for key in jwt.PyJWKSet.from_dict(jwks).keys:
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(bound.token, key.key, algorithms=["RS256"], audience=bound.audience)
    assert review(other, bound.token, bound.audience).authenticated is not True


def test_token_review_fails_after_pod_deleted(kube_clusters: dict[str, KubeCluster]) -> None:
    bound = {name: mint_bound_token(c, "revoke") for name, c in kube_clusters.items()}
    for name, cluster in kube_clusters.items():
        token = bound[name]
        assert review(cluster, token.token, token.audience).authenticated is True
        with cluster.api_client() as api:
            core(api).delete_namespaced_pod(token.pod, token.namespace)
    # The API server caches successful authentications for up to 10 s, so poll.
    for name, cluster in kube_clusters.items():
        token = bound[name]

        def rejected(c: KubeCluster = cluster, t: BoundToken = token) -> Any:
            status = review(c, t.token, t.audience)
            return None if status.authenticated else status

        status = eventually(rejected, f"TokenReview on {name} rejecting a deleted pod's token")
        assert "service account token has been invalidated" in status.error
        # The JWT's signature is still fine: only the cluster knows the pod is gone.
        verify(token.token, cluster.jwks(), token.audience, cluster.issuer)


@pytest.mark.parametrize("name", NAMES)
def test_mutating_webhook_called_on_pod_creation(
    kube_clusters: dict[str, KubeCluster], webhook: WebhookProbe, name: str
) -> None:
    path = f"/mutate/{name}"
    selector = {"keyferry.test/webhook-target": name}
    config_name = f"keyferry-probe-{name}"
    with kube_clusters[name].api_client() as api:
        namespace = new_namespace(api, "webhook", labels=selector)
        webhooks = admission(api)
        webhooks.create_mutating_webhook_configuration(
            _webhook_config(config_name, webhook.url(path), webhook.ca_bundle(), selector)
        )
        v1 = core(api)
        attempts = iter(range(1000))

        def patched_pod() -> Any:
            # The API server picks up a new webhook configuration asynchronously.
            created = v1.create_namespaced_pod(namespace, pod(f"probe-{next(attempts)}"))
            if (created.metadata.labels or {}).get(LABEL_KEY) == LABEL_VALUE:
                return created
            v1.delete_namespaced_pod(created.metadata.name, namespace)
            return None

        try:
            created = eventually(patched_pod, f"the webhook patching a pod on {name}")
            stored = v1.read_namespaced_pod(created.metadata.name, namespace)
        finally:
            webhooks.delete_mutating_webhook_configuration(config_name)
    assert stored.metadata.labels[LABEL_KEY] == LABEL_VALUE
    requests = webhook.requests_on(path)
    mine = [r for r in requests if r["name"] == created.metadata.name]
    assert len(mine) == 1
    assert mine[0]["namespace"] == namespace
    assert mine[0]["operation"] == "CREATE"
    assert mine[0]["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert {r["namespace"] for r in requests} == {namespace}


def test_helm_chart_applies_with_server_dry_run(kube_cluster: KubeCluster) -> None:
    with kube_cluster.api_client() as api:
        namespace = new_namespace(api, "helm")
    chart = str(CHARTS / "minimal")
    rendered = kube_cluster.helm("template", "smoke", chart, f"--namespace={namespace}")
    kinds = {
        line.split(":", 1)[1].strip() for line in rendered.splitlines() if line.startswith("kind:")
    }
    assert kinds == {"ServiceAccount", "ConfigMap", "Role", "RoleBinding", "Deployment"}
    assert 'kubeVersion: "v1.34.0"' in rendered

    applied = kube_cluster.kubectl(
        "apply", "--dry-run=server", f"--namespace={namespace}", "--filename=-", stdin=rendered
    )
    assert applied.count("(server dry run)") == len(kinds)
    assert "deployment.apps/smoke created (server dry run)" in applied
    with pytest.raises(ToolFailed, match="NotFound"):
        kube_cluster.kubectl("get", "deployment", "smoke", f"--namespace={namespace}")

    # The server, not the client, validates: a negative replica count is refused.
    broken = kube_cluster.helm(
        "template", "smoke", chart, f"--namespace={namespace}", "--set=replicaCount=-1"
    )
    with pytest.raises(ToolFailed, match=r"spec\.replicas"):
        kube_cluster.kubectl(
            "apply", "--dry-run=server", f"--namespace={namespace}", "--filename=-", stdin=broken
        )


def _config_map(v1: Any, namespace: str, name: str) -> Any:
    try:
        return v1.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _webhook_config(name: str, url: str, ca_bundle: str, selector: dict[str, str]) -> Any:
    return k8s.V1MutatingWebhookConfiguration(
        metadata=k8s.V1ObjectMeta(name=name),
        webhooks=[
            k8s.V1MutatingWebhook(
                name=f"{name}.keyferry.test",
                client_config=k8s.AdmissionregistrationV1WebhookClientConfig(
                    url=url, ca_bundle=ca_bundle
                ),
                rules=[
                    k8s.V1RuleWithOperations(
                        api_groups=[""],
                        api_versions=["v1"],
                        operations=["CREATE"],
                        resources=["pods"],
                        scope="Namespaced",
                    )
                ],
                namespace_selector=k8s.V1LabelSelector(match_labels=selector),
                failure_policy="Fail",
                side_effects="None",
                admission_review_versions=["v1"],
                timeout_seconds=5,
            )
        ],
    )
