"""The webhook on real API servers (clusters a and b): registered by URL, called on pod creation.

Each cluster gets its own in-process webhook (its config names the cluster, so the token
audience differs) on 127.0.0.1 with a fresh CA, and a registration that only selects
namespaces carrying the harness's opt-in label (tests/scene/webhook_harness.py), so other
tests' pods never depend on it.
Pods are stored, never run (the bed has no nodes): what is checked is the stored pod.
"""

from __future__ import annotations

import functools
import json
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.bed.kube import KubeCluster
from tests.scene.kube_helpers import admission, apps, core, eventually, new_namespace
from tests.scene.webhook_harness import (
    APP_UID,
    INJECT,
    OPT_IN,
    RUN,
    Harness,
    agent_of,
    harnesses,
    pod_body,
    volumes_of,
)
from tests.scene.webhook_probe import LABEL_KEY, WebhookProbe, start_webhook_probe

pytestmark = pytest.mark.bed
NAMES = ("a", "b")


@pytest.fixture(scope="module")
def webhooks(
    kube_clusters: dict[str, KubeCluster], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Harness]]:
    folder = tmp_path_factory.mktemp("keyferry-webhook")
    with harnesses([kube_clusters[name] for name in NAMES], folder) as running:
        yield running


@pytest.mark.parametrize("name", NAMES)
def test_annotated_pod_is_mutated(webhooks: dict[str, Harness], name: str) -> None:
    harness = webhooks[name]
    namespace = harness.namespace("inject")
    harness.create(namespace, pod_body("app", INJECT))
    stored = harness.read(namespace, "app")

    agent = agent_of(stored)
    assert agent is not None
    assert agent["restartPolicy"] == "Always"
    assert agent["startupProbe"]["exec"]["command"] == ["python3", "-I", "-m", "injector.probe"]
    assert agent["command"] == ["keyferry", "agent"]
    assert agent["args"] == ["run"]
    assert agent["image"] == "keyferry/agent:test"
    security = agent["securityContext"]
    assert security["runAsUser"] == APP_UID
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    spec = json.loads(next(e["value"] for e in agent["env"] if e["name"] == "KEYFERRY_AGENT_SPEC"))
    assert spec["cluster"] == name
    assert spec["credentials"] == [{"name": "db", "role": "orders-db-ro", "format": None}]

    volumes = volumes_of(stored)
    assert volumes["keyferry-secrets"]["emptyDir"]["medium"] == "Memory"
    token = volumes["keyferry-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": f"keyferry:{name}", "expirationSeconds": 600, "path": "token"}
    (app,) = stored["spec"]["containers"]
    mounts = [m for m in app["volumeMounts"] if m["name"].startswith("keyferry-")]
    assert mounts == [
        {"name": "keyferry-secrets", "mountPath": "/keyferry/secrets", "readOnly": True}
    ]
    # The API server may call keyferry again after its own plugins touched the pod
    # (reinvocationPolicy IfNeeded): only the first call patches.
    calls = harness.admissions(namespace)
    assert {a.name for a in calls} == {"app"}
    assert [a.patched for a in calls] == [True] + [False] * (len(calls) - 1)


API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.mark.parametrize("name", NAMES)
def test_the_agent_gets_no_kubernetes_api_token_while_the_app_keeps_its_own(
    webhooks: dict[str, Harness], name: str
) -> None:
    """The ServiceAccount admission plugin mounts the API token into every container that
    has nothing at its path, on its first pass and again when the API server re-runs it
    after keyferry's patch. The agent's empty mount there keeps it out of the agent only."""
    harness = webhooks[name]
    namespace = harness.namespace("api-token")
    harness.create(namespace, pod_body("app", INJECT))  # automountServiceAccountToken default
    stored = harness.read(namespace, "app")

    api_volumes = [v for v in volumes_of(stored) if v.startswith("kube-api-access-")]
    assert len(api_volumes) == 1, "the ServiceAccount plugin did not run"
    (app,) = stored["spec"]["containers"]
    assert {"name": api_volumes[0], "mountPath": API_TOKEN_PATH, "readOnly": True} in app[
        "volumeMounts"
    ]
    agent = agent_of(stored)
    assert agent is not None
    at_token_path = [m for m in agent["volumeMounts"] if m["mountPath"] == API_TOKEN_PATH]
    assert at_token_path == [
        {"name": "keyferry-no-api-token", "mountPath": API_TOKEN_PATH, "readOnly": True}
    ]
    assert not [m for m in agent["volumeMounts"] if m["name"].startswith("kube-api-access-")]
    assert volumes_of(stored)["keyferry-no-api-token"]["emptyDir"]["medium"] == "Memory"


def test_readmission_after_another_webhook_changes_the_pod(
    webhooks: dict[str, Harness], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second webhook that patches after keyferry makes the API server call keyferry again
    (reinvocationPolicy IfNeeded); that second call must add nothing."""
    harness = webhooks["a"]
    probe: WebhookProbe = start_webhook_probe(tmp_path_factory.mktemp("probe"))
    selector = {f"keyferry.test/probe-{RUN}": "on"}
    name = f"zz-probe-{RUN}"  # webhooks run in name order: after keyferry's
    try:
        with harness.cluster.api_client() as api:
            namespace = new_namespace(api, "reinvoke", labels={**dict([OPT_IN]), **selector})
            admission(api).create_mutating_webhook_configuration(
                _probe_registration(name, probe.url("/mutate/a"), probe.ca_bundle(), selector)
            )

        def labelled() -> dict[str, Any] | None:
            stored = harness.create(namespace, pod_body(annotations=INJECT))
            return stored if LABEL_KEY in (stored["metadata"].get("labels") or {}) else None

        stored = eventually(labelled, "the probe webhook patching after keyferry")
    finally:
        with harness.cluster.api_client() as api:
            admission(api).delete_mutating_webhook_configuration(name)
        probe.stop()
    assert agent_of(stored) is not None
    assert list(volumes_of(stored)).count("keyferry-token") == 1
    calls = [a for a in harness.admissions(namespace) if a.name == "app-"]
    assert any(not a.patched for a in calls), "keyferry was not reinvoked"


def test_deployment_pod_with_generated_name_is_mutated(webhooks: dict[str, Harness]) -> None:
    harness = webhooks["a"]
    namespace = harness.namespace("deploy")
    labels = {"app": "orders"}
    template = pod_body(annotations=INJECT)
    template["metadata"]["labels"] = labels
    del template["metadata"]["generateName"], template["apiVersion"], template["kind"]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "orders"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }
    with harness.cluster.api_client() as api:
        apps(api).create_namespaced_deployment(namespace, body)

        def a_pod() -> Any:
            pods = core(api).list_namespaced_pod(namespace, label_selector="app=orders").items
            return pods[0] if pods else None

        found = eventually(a_pod, f"a pod of Deployment orders in {namespace}")
    stored = harness.read(namespace, found.metadata.name)
    assert stored["metadata"]["name"].startswith("orders-")
    agent = agent_of(stored)
    assert agent is not None
    assert agent["restartPolicy"] == "Always"
    assert "keyferry-token" in volumes_of(stored)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            {**INJECT, "keyferry.io/format.db": "yaml"},
            "annotation keyferry.io/format.db: 'yaml' is not a file format",
        ),
        (
            {**INJECT, "keyferry.io/image": "evil:1"},
            "annotation keyferry.io/image: is not a keyferry annotation",
        ),
        (
            {"keyferry.io/inject": "true", "keyferry.io/role.etc..passwd": "r"},
            "is not a safe file name",
        ),
        (
            {**INJECT, "keyferry.io/on-rotate": "signal:SIGHUP"},
            "set spec.shareProcessNamespace: true",
        ),
    ],
)
def test_bad_annotation_is_refused_by_the_api_server(
    webhooks: dict[str, Harness], name: str, annotations: dict[str, str], message: str
) -> None:
    harness = webhooks[name]
    namespace = harness.namespace("refuse")
    with pytest.raises(ApiException) as refused:
        harness.create(namespace, pod_body("bad", annotations))
    assert refused.value.status == 400
    body = json.loads(refused.value.body or "{}")
    assert "denied the request" in body["message"]
    assert message in body["message"]
    with harness.cluster.api_client() as api, pytest.raises(ApiException) as missing:
        core(api).read_namespaced_pod("bad", namespace)
    assert missing.value.status == 404


@pytest.mark.parametrize("name", NAMES)
def test_unannotated_pod_is_untouched(webhooks: dict[str, Harness], name: str) -> None:
    harness = webhooks[name]
    namespace = harness.namespace("plain")
    harness.create(namespace, pod_body("plain"))
    stored = harness.read(namespace, "plain")
    assert agent_of(stored) is None
    assert not [v for v in volumes_of(stored) if v.startswith("keyferry-")]
    (seen,) = harness.admissions(namespace)
    assert seen.allowed
    assert not seen.patched


def test_kube_system_and_own_namespace_are_never_sent(webhooks: dict[str, Harness]) -> None:
    """Even when they carry the opt-in label, the registration's NotIn keeps them out."""
    harness = webhooks["a"]
    own = harness.config.namespace
    name = f"untouched-{RUN}"
    label = {"metadata": {"labels": {OPT_IN[0]: OPT_IN[1]}}}
    with harness.cluster.api_client() as api:
        v1 = core(api)
        v1.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=own)))
        v1.patch_namespace(own, label)
        v1.patch_namespace("kube-system", label)
        try:
            for namespace in ("kube-system", own):
                eventually(
                    functools.partial(_default_account, v1, namespace),
                    f"the default ServiceAccount in {namespace}",
                )
                harness.create(namespace, pod_body(name, INJECT))
                stored = harness.read(namespace, name)
                v1.delete_namespaced_pod(name, namespace)
                assert agent_of(stored) is None, namespace
                assert harness.admissions(namespace) == [], namespace
        finally:
            v1.patch_namespace("kube-system", {"metadata": {"labels": {OPT_IN[0]: None}}})


def test_init_only_mode_gives_a_plain_init_container(webhooks: dict[str, Harness]) -> None:
    harness = webhooks["b"]
    namespace = harness.namespace("init-only")
    existing = [{"name": "migrate", "image": "keyferry/smoke:0.1.0"}]
    annotations = {**INJECT, "keyferry.io/mode": "init-only"}
    harness.create(namespace, pod_body("job", annotations, initContainers=existing))
    stored = harness.read(namespace, "job")
    init = stored["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["keyferry-agent", "migrate"]
    assert "restartPolicy" not in init[0]
    assert "startupProbe" not in init[0]
    assert {"name": "keyferry-secrets", "mountPath": "/keyferry/secrets", "readOnly": True} in init[
        1
    ]["volumeMounts"]


@pytest.mark.parametrize("name", NAMES)
def test_server_side_dry_run_is_mutated_and_stores_nothing(
    webhooks: dict[str, Harness], name: str
) -> None:
    harness = webhooks[name]
    namespace = harness.namespace("dry-run")
    answered = harness.create(namespace, pod_body("dry", INJECT), dry_run="All")
    assert agent_of(answered) is not None
    with harness.cluster.api_client() as api, pytest.raises(ApiException) as missing:
        core(api).read_namespaced_pod("dry", namespace)
    assert missing.value.status == 404
    calls = harness.admissions(namespace)
    assert all(a.dry_run for a in calls)
    assert [a.patched for a in calls] == [True] + [False] * (len(calls) - 1)


def test_latency_report(webhooks: dict[str, Harness], capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: the webhook's own time per admission, and the API round trip."""
    with capsys.disabled():
        for name, harness in webhooks.items():
            inside = sorted(a.seconds * 1000 for a in harness.seen)
            around = sorted(t * 1000 for t in harness.round_trips)
            print(
                f"\nkeyferry webhook on cluster {name}: {len(inside)} admissions, "
                f"webhook time median {statistics.median(inside):.2f} ms, "
                f"max {inside[-1]:.2f} ms; pod create round trip median "
                f"{statistics.median(around):.1f} ms, max {around[-1]:.1f} ms"
            )


def _default_account(v1: Any, namespace: str) -> bool:
    return any(
        sa.metadata.name == "default" for sa in v1.list_namespaced_service_account(namespace).items
    )


def _probe_registration(
    name: str, url: str, ca_bundle: str, selector: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{name}.keyferry.test",
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchLabels": selector},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }
        ],
    }
