"""The Helm chart charts/keyferry, with the bed's helm and kubectl against a real API server.

- `helm lint` and `helm template` for the default values and ci/ha-values.yaml;
- every rendered object accepted by cluster a's API server (server-side dry run); the
  ServiceMonitor, Certificate and Issuer against minimal copies of their CRDs (structure
  only: their fields are checked here, not by the real CRDs' schemas);
- the Deployments' pods admitted by a namespace that enforces Pod Security "restricted"
  (the bed's controllers create the pods; no kubelet runs them);
- bad values refused by values.schema.json (or the templates' `fail`) with the field named;
- the rendered broker.yaml and webhook.yaml accepted by the broker's and the webhook's own
  settings models, the registration equal to injector/webhook/registration.py's;
- member-cluster RBAC rule for rule as docs/examples/broker-rbac.yaml, and what it grants;
- the chart's MutatingWebhookConfiguration, pointed by `webhook.url` at keyferry's webhook
  running here with the chart's webhook.yaml, mutating a pod created through the API server.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from broker.policy.engine import PolicyEngine
from broker.settings import BrokerSettings, load_settings
from injector.webhook.config import WebhookConfig
from injector.webhook.registration import registration
from injector.webhook.server import MUTATE_PATH, WebhookServer, server_context
from tests.bed.cluster import Cluster
from tests.bed.kube import ToolFailed
from tests.bed.pki import new_ca
from tests.bed.ports import LOOPBACK
from tests.scene.kube_helpers import core, eventually, new_namespace

pytestmark = pytest.mark.bed

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "keyferry"
HA_VALUES = CHART / "ci" / "ha-values.yaml"
BROKER_RBAC = REPO / "docs" / "examples" / "broker-rbac.yaml"
RELEASE = "keyferry"
CLUSTER_SCOPED = {"MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding"}
# Broker settings the chart writes from its own values; the rest pass through broker.config.
# `tracing` comes from the top-level `tracing` values, as environment variables.
CHART_OWNED_SETTINGS = {"data_dir", "policies", "roles", "workload", "admin", "metrics", "tracing"}
VARIANTS = {"default": (), "ha": (f"--values={HA_VALUES}",)}
# A member cluster: its webhook and the broker's RBAC, no broker.
MEMBER = (
    "--set=broker.enabled=false",
    "--set=memberRBAC.enabled=true",
    "--set=webhook.clusterName=b",
    "--set=webhook.brokerAddress=keyferry.example.com:8443",
)
ALL_VARIANTS = {**VARIANTS, "member": MEMBER}
DEFAULT_KINDS = {
    "ConfigMap": 3,
    "Deployment": 2,
    "MutatingWebhookConfiguration": 1,
    "NetworkPolicy": 2,
    "PodDisruptionBudget": 2,
    "Secret": 1,
    "Service": 2,
    "ServiceAccount": 2,
}
HA_KINDS = {
    **{kind: n for kind, n in DEFAULT_KINDS.items() if kind != "Secret"},
    "Certificate": 1,
    "Issuer": 1,
    "ServiceMonitor": 1,
    "ClusterRole": 1,
    "ClusterRoleBinding": 1,
    # also a member: cluster access's namespace, and the broker's Role and binding in it
    "Namespace": 1,
    "Role": 1,
    "RoleBinding": 1,
}
MEMBER_KINDS = {
    **{kind: 1 for kind in DEFAULT_KINDS},
    "ServiceAccount": 2,  # the webhook's and the broker's (the member RBAC's subject)
    "ClusterRole": 1,
    "ClusterRoleBinding": 1,
    # cluster access: the access namespace, and the broker's Role and binding in it
    "Namespace": 1,
    "Role": 1,
    "RoleBinding": 1,
}
EXPECTED_KINDS = {"default": DEFAULT_KINDS, "ha": HA_KINDS, "member": MEMBER_KINDS}


def access_here(variant: str, namespace: str) -> tuple[str, ...]:
    """The variant with its member RBAC's cluster-access objects in `namespace` too (a
    test's own namespace; by default the chart puts them in a namespace of their own)."""
    return (f"--set=memberRBAC.clusterAccess.namespace={namespace}",)


def render(cluster: Cluster, namespace: str, *args: str) -> list[dict[str, Any]]:
    text = cluster.helm("template", RELEASE, str(CHART), f"--namespace={namespace}", *args)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kinds(objects: list[dict[str, Any]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for obj in objects:
        counted[obj["kind"]] = counted.get(obj["kind"], 0) + 1
    return counted


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}"
    return found[0]


def as_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A minimal CustomResourceDefinition: the kind exists, any fields are accepted."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def crds(kube_cluster: Cluster) -> None:
    """The Prometheus Operator's and cert-manager's kinds the HA values use, on cluster a."""
    definitions = [
        crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        crd("cert-manager.io", "Certificate", "certificates"),
        crd("cert-manager.io", "Issuer", "issuers"),
    ]
    kube_cluster.kubectl("apply", "--filename=-", stdin=as_yaml(definitions))
    names = [f"crd/{d['metadata']['name']}" for d in definitions]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


# ------------------------------------------------------------------ lint and template


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_helm_lint(kube_cluster: Cluster, variant: str) -> None:
    out = kube_cluster.helm("lint", "--strict", str(CHART), *ALL_VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_template_renders_the_expected_objects(kube_cluster: Cluster, variant: str) -> None:
    objects = render(kube_cluster, "keyferry-system", *ALL_VARIANTS[variant])
    assert kinds(objects) == EXPECTED_KINDS[variant]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert (("Deployment", "keyferry-broker") in names) is (variant != "member")
    assert ("Deployment", "keyferry-webhook") in names
    assert ("ServiceAccount", "keyferry-broker") in names


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_pods_are_locked_down(kube_cluster: Cluster, variant: str) -> None:
    """Restricted Pod Security and no API credentials unless leader election needs them."""
    objects = render(kube_cluster, "keyferry-system", *ALL_VARIANTS[variant])
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] > 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["limits"]["memory"]
            assert container["startupProbe"]
            assert container["livenessProbe"]
            assert container["readinessProbe"]
        # Neither needs the Kubernetes API of its own cluster (the broker's replicas elect
        # their leader in PostgreSQL): no pod mounts a ServiceAccount token.
        assert spec["automountServiceAccountToken"] is False
    webhook = one(objects, "Deployment", "keyferry-webhook")["spec"]["template"]["spec"]
    probe = webhook["containers"][0]["readinessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}


def test_ha_values_spread_and_guard_the_broker(kube_cluster: Cluster) -> None:
    objects = render(kube_cluster, "keyferry-system", *VARIANTS["ha"])
    broker = one(objects, "Deployment", "keyferry-broker")
    assert broker["spec"]["replicas"] == 3
    pod = broker["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in pod["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert env["KEYFERRY_STORE__URL"] == {"name": "keyferry-broker", "key": "store-url"}
    assert set(env) == {
        "KEYFERRY_STORE__URL",
        "KEYFERRY_VAULT__APPROLE__SECRET_ID",
        "KEYFERRY_AUDIT__HMAC_KEY",
        "KEYFERRY_SEALING__KEY",
    }
    assert one(objects, "PodDisruptionBudget", "keyferry-broker")["spec"] == {
        "minAvailable": 2,
        "selector": broker["spec"]["selector"],
    }
    policy = one(objects, "NetworkPolicy", "keyferry-broker")["spec"]
    assert [rule["ports"][0]["port"] for rule in policy["ingress"]] == [
        "workload",
        "admin",
        "metrics",
    ]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    webhook = one(objects, "MutatingWebhookConfiguration")
    annotation = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    certificate = one(objects, "Certificate")
    assert annotation == f"keyferry-system/{certificate['metadata']['name']}"
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    tls = one(objects, "Deployment", "keyferry-webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": certificate["spec"]["secretName"], "defaultMode": 0o440} in [
        v.get("secret") for v in tls
    ]


# ------------------------------------------------------------------ the API server accepts it


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_object_passes_a_server_side_dry_run(
    kube_cluster: Cluster, crds: None, variant: str
) -> None:
    with kube_cluster.api_client() as api:
        namespace = new_namespace(api, f"chart-{variant}")
    objects = render(
        kube_cluster, namespace, *ALL_VARIANTS[variant], *access_here(variant, namespace)
    )
    applied = kube_cluster.kubectl(
        "apply",
        "--dry-run=server",
        f"--namespace={namespace}",
        "--filename=-",
        stdin=as_yaml(objects),
    )
    lines = [line for line in applied.splitlines() if line.strip()]
    assert len(lines) == len(objects)
    assert all(line.endswith("(server dry run)") for line in lines), applied
    with pytest.raises(ToolFailed, match="NotFound"):
        kube_cluster.kubectl("get", "deployment", "keyferry-broker", f"--namespace={namespace}")


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_pods_are_admitted_under_restricted_pod_security(
    kube_cluster: Cluster, crds: None, variant: str
) -> None:
    """Applied for real in a namespace enforcing "restricted": the bed's Deployment and
    ReplicaSet controllers create the pods, which PodSecurity admission would refuse."""
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    with kube_cluster.api_client() as api:
        namespace = new_namespace(api, f"psa-{variant}", labels=restricted)
        # The namespace really enforces: a pod that may escalate privileges is refused.
        loose = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "loose"},
            "spec": {"containers": [{"name": "app", "image": "keyferry/smoke:0.1.0"}]},
        }
        with pytest.raises(ApiException) as refused:
            core(api).create_namespaced_pod(namespace, loose)
        assert "violates PodSecurity" in (refused.value.body or "")
    objects = render(
        kube_cluster, namespace, *ALL_VARIANTS[variant], *access_here(variant, namespace)
    )
    namespaced = [o for o in objects if o["kind"] not in CLUSTER_SCOPED]
    kube_cluster.kubectl(
        "apply", f"--namespace={namespace}", "--filename=-", stdin=as_yaml(namespaced)
    )
    with kube_cluster.api_client() as api:
        v1 = core(api)
        for deployment in (o for o in objects if o["kind"] == "Deployment"):
            selector = ",".join(
                f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
            )
            want = deployment["spec"]["replicas"]

            def pods(selector: str = selector, want: int = want) -> list[Any] | None:
                found = v1.list_namespaced_pod(namespace, label_selector=selector).items
                return found if len(found) >= want else None

            made = eventually(pods, f"{want} pods of {deployment['metadata']['name']}")
            for pod in made:
                assert pod.spec.security_context.run_as_non_root is True


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set=broker.replicas=0"], "at '/broker/replicas': minimum: got 0, want 1"),
        (
            ["--set=webhook.failurePolicy=Never"],
            "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'",
        ),
        (["--set=webhook.timeoutSeconds=60"], "at '/webhook/timeoutSeconds': maximum: got 60"),
        (["--set=webhook.clusterName=Prod_EU"], "at '/webhook/clusterName': 'Prod_EU' does not"),
        (
            ["--set=webhook.tokenExpirationSeconds=60"],
            "at '/webhook/tokenExpirationSeconds': minimum: got 60, want 600",
        ),
        (["--set=images.agent.digest=sha256:abc"], "at '/images/agent/digest'"),
        (["--set=broker.config.vaul.addr=x"], "additional properties 'vaul' not allowed"),
        (["--set=broker.config.workload.port=1"], "additional properties 'workload' not allowed"),
        (["--set=webhook.tls.mode=vault"], "at '/webhook/tls/mode': value must be one of"),
        (
            ["--set=webhook.tls.mode=existingSecret", "--set=webhook.tls.existingSecret=x"],
            "at '/webhook/tls/caBundle': minLength: got 0, want 1",
        ),
        (["--set=webhook.url=http://10.0.0.1/mutate"], "at '/webhook/url'"),
        (
            ["--set=webhook.url=https://10.0.0.1/mutate"],
            "at '/webhook/tls/mode': value must be 'existingSecret'",
        ),
        (["--set=broker.replicas=2"], "at '/broker/secretKeys/storeUrl': minLength: got 0"),
        (
            [
                "--set=broker.replicas=2",
                "--set=broker.secretKeys.storeUrl=url",
                "--set=broker.persistence.enabled=true",
            ],
            "at '/broker/persistence/enabled': value must be false",
        ),
        (["--set=broker.enabled=false"], "at '/webhook/brokerAddress': minLength: got 0"),
        (
            ["--set=broker.serviceMonitor.enabled=true", "--set=broker.ports.metrics=null"],
            "at '/broker/ports': missing property 'metrics'",
        ),
        (["--set=broker.runAsUser=0"], "at '/broker/runAsUser': minimum: got 0, want 1"),
    ],
)
@pytest.mark.parametrize("command", [("lint",), ("template", RELEASE)], ids=["lint", "template"])
def test_bad_values_are_refused_naming_the_field(
    kube_cluster: Cluster, command: tuple[str, ...], values: list[str], message: str
) -> None:
    """Both `helm lint` and `helm template` (hence install) check values.schema.json."""
    with pytest.raises(ToolFailed) as failed:
        kube_cluster.helm(*command, str(CHART), *values)
    assert message in failed.value.output


# ------------------------------------------------------------------ the components' own models


def _config_map(objects: list[dict[str, Any]], name: str, key: str) -> str:
    data: str = one(objects, "ConfigMap", name)["data"][key]
    return data


@pytest.mark.parametrize("variant", VARIANTS)
def test_broker_yaml_is_a_valid_broker_configuration(
    kube_cluster: Cluster, variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """broker.yaml loads with the broker's own settings, its files laid out as the
    Deployment mounts them (under tmp_path) and its secrets in the environment."""
    objects = render(kube_cluster, "keyferry-system", *VARIANTS[variant])
    broker = one(objects, "Deployment", "keyferry-broker")["spec"]["template"]["spec"]
    container = broker["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    root = tmp_path / "pod"

    def relocate(value: Any) -> Any:
        """A path under one of the pod's mounts, moved under `root`."""
        if isinstance(value, dict):
            return {k: relocate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relocate(v) for v in value]
        if isinstance(value, str) and value.startswith("sqlite:///"):
            return "sqlite:///" + relocate(value.removeprefix("sqlite:///"))
        if isinstance(value, str) and any(
            value == m or value.startswith(f"{m}/") for m in mounts.values()
        ):
            return f"{root}{value}"
        return value

    text = yaml.safe_dump(
        relocate(yaml.safe_load(_config_map(objects, "keyferry-broker-config", "broker.yaml")))
    )
    (root / mounts["config"].lstrip("/")).mkdir(parents=True)
    config = root / mounts["config"].lstrip("/") / "broker.yaml"
    config.write_text(text)
    policies = _config_map(objects, "keyferry-broker-policies", "policies.cedar")
    (root / mounts["policies"].lstrip("/")).mkdir(parents=True)
    (root / mounts["policies"].lstrip("/") / "policies.cedar").write_text(policies)
    PolicyEngine(policies, "policies ConfigMap")  # parses and fits keyferry's schema
    files = {
        "workload-tls": ["tls.crt", "tls.key"],
        "admin-tls": ["broker-admin.crt", "broker-admin.key", "ca.crt"],
        "vault-ca": ["ca.crt"],
    }
    for volume, names in files.items():
        if volume in mounts:
            folder = root / mounts[volume].lstrip("/")
            folder.mkdir(parents=True)
            for name in names:
                (folder / name).write_text("PEM\n")
    if "roles.yaml" in one(objects, "ConfigMap", "keyferry-broker-config")["data"]:
        roles = _config_map(objects, "keyferry-broker-config", "roles.yaml")
        (config.parent / "roles.yaml").write_text(roles)
    store_url = "postgresql://keyferry:pw@db.internal/keyferry"
    values = {
        "KEYFERRY_VAULT__APPROLE__SECRET_ID": "secret-id",
        "KEYFERRY_AUDIT__HMAC_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "KEYFERRY_SEALING__KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "KEYFERRY_STORE__URL": store_url,
    }
    for env in container["env"]:
        if "secretKeyRef" in env.get("valueFrom", {}):
            monkeypatch.setenv(env["name"], values[env["name"]])

    settings = load_settings(config)
    assert settings.workload.port == container["ports"][0]["containerPort"] == 8443
    assert settings.audit.log.parent == settings.data_dir
    assert str(settings.data_dir).endswith(mounts["data"])
    assert settings.metrics.port == 9464
    if variant == "default":
        assert settings.store.url.get_secret_value().startswith(f"sqlite:///{root}")
        assert settings.workload.tls_cert is None
        assert not settings.admin.enabled
    else:
        assert settings.store.url.get_secret_value() == store_url
        assert settings.workload.tls_cert is not None
        assert settings.admin.enabled
        assert settings.vault.ca_file is not None
        assert settings.roles is not None
        assert settings.audit.transit_key == "audit-checkpoints"


def test_schema_knows_every_broker_setting() -> None:
    """broker.config refuses unknown groups, so the schema must list every group the broker
    has that the chart does not set itself; a new broker setting fails here first."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    groups = set(schema["properties"]["broker"]["properties"]["config"]["properties"])
    assert groups | CHART_OWNED_SETTINGS == set(BrokerSettings.model_fields)
    assert not groups & CHART_OWNED_SETTINGS


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhook_yaml_and_registration_match_the_injectors_own(
    kube_cluster: Cluster, variant: str
) -> None:
    namespace = "keyferry-system"
    objects = render(kube_cluster, namespace, *VARIANTS[variant])
    config = WebhookConfig.model_validate(
        yaml.safe_load(_config_map(objects, "keyferry-webhook-config", "webhook.yaml"))
    )
    assert config.namespace == namespace
    assert config.broker.address == "keyferry-broker.keyferry-system.svc:8443"
    assert (config.agent.backoff_base_seconds, config.agent.backoff_cap_seconds) == (1.0, 30.0)
    assert config.server is not None
    limits = config.server.limits
    assert (limits.max_connections, limits.request_seconds) == (
        (256, 10.0) if variant == "default" else (512, 5.0)
    )
    rendered = one(objects, "MutatingWebhookConfiguration")
    (hook,) = rendered["webhooks"]
    expected = registration(rendered["metadata"]["name"], "unused", "unused", config)
    (want,) = expected["webhooks"]
    for entry in (hook, want):
        entry.pop("clientConfig")
        entry.pop("objectSelector", None)
    want["timeoutSeconds"] = hook["timeoutSeconds"]
    want["namespaceSelector"]["matchLabels"] = {"keyferry.io/injection": "enabled"}  # opt-in
    assert hook == want
    assert hook["timeoutSeconds"] == (5 if variant == "default" else 10)


def test_tracing_values_reach_the_broker_and_every_agent(kube_cluster: Cluster) -> None:
    """Off by default: no OTEL_* anywhere. On: the broker's container and the webhook's
    agent containers get the collector, a service name each and the extra variables."""
    plain = render(kube_cluster, "keyferry-system")
    assert "OTEL_" not in as_yaml(plain)
    objects = render(
        kube_cluster,
        "keyferry-system",
        "--set=tracing.enabled=true",
        "--set=tracing.endpoint=http://otel-collector.observability:4317",
        "--set=tracing.env.OTEL_TRACES_SAMPLER=parentbased_always_on",
    )
    broker = one(objects, "Deployment", "keyferry-broker")
    (container,) = broker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KEYFERRY_TRACING__ENABLED"] == "true"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_SERVICE_NAME"] == "keyferry-broker"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    config = WebhookConfig.model_validate(
        yaml.safe_load(_config_map(objects, "keyferry-webhook-config", "webhook.yaml"))
    )
    assert config.agent.env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
        "OTEL_SERVICE_NAME": "keyferry-agent",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


# ------------------------------------------------------------------ member-cluster RBAC


def test_member_rbac_alone_matches_the_documented_rbac(kube_clusters: dict[str, Cluster]) -> None:
    cluster = kube_clusters["b"]
    with cluster.api_client() as api:
        namespace = new_namespace(api, "member")
    only = [
        "--set=broker.enabled=false",
        "--set=webhook.enabled=false",
        "--set=memberRBAC.enabled=true",
    ]
    access = f"access-{secrets.token_hex(3)}"  # the cluster-access namespace, this run's
    objects = render(
        cluster, namespace, *only, f"--set=memberRBAC.clusterAccess.namespace={access}"
    )
    assert kinds(objects) == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Namespace": 1,
        "Role": 1,
        "RoleBinding": 1,
    }
    documented = [d for d in yaml.safe_load_all(BROKER_RBAC.read_text()) if d]
    assert one(objects, "ClusterRole")["rules"] == one(documented, "ClusterRole")["rules"]
    assert one(objects, "Role")["rules"] == one(documented, "Role")["rules"]
    assert one(objects, "Role")["metadata"]["namespace"] == access
    role_binding = one(objects, "RoleBinding")
    assert role_binding["roleRef"]["name"] == one(objects, "Role")["metadata"]["name"]
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert account == one(documented, "ServiceAccount")["metadata"]["name"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    ]
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]

    in_access = [
        o for o in objects if o["kind"] == "Namespace" or o["metadata"].get("namespace") == access
    ]
    rest = [o for o in objects if o not in in_access]
    cluster.kubectl("apply", "--filename=-", stdin=as_yaml(in_access))
    cluster.kubectl("apply", f"--namespace={namespace}", "--filename=-", stdin=as_yaml(rest))
    who = f"--as=system:serviceaccount:{namespace}:{account}"
    allowed = [
        ("list", "pods", "--all-namespaces"),
        ("watch", "pods", "--all-namespaces"),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("get", "/openid/v1/jwks"),
        ("get", "/.well-known/openid-configuration"),
        ("create", "rolebindings", "--all-namespaces"),
        ("delete", "clusterrolebindings"),
        ("bind", "clusterroles/edit"),
        ("bind", "clusterroles/view"),
        ("create", "serviceaccounts", f"--namespace={access}"),
        ("create", "serviceaccounts/token", f"--namespace={access}"),
    ]
    denied = [
        ("bind", "clusterroles/cluster-admin"),
        ("bind", "clusterroles/admin"),
        ("escalate", "clusterroles/view"),
        ("create", "serviceaccounts", f"--namespace={namespace}"),
        ("get", "secrets", "--all-namespaces"),
        ("create", "pods", f"--namespace={namespace}"),
        ("delete", "pods", f"--namespace={namespace}"),
        ("create", "serviceaccounts/token", f"--namespace={namespace}"),
        ("get", "/metrics"),
    ]
    for check in allowed:
        assert cluster.kubectl("auth", "can-i", *check, who).strip() == "yes", check
    for check in denied:
        with pytest.raises(ToolFailed) as refused:
            cluster.kubectl("auth", "can-i", *check, who)
        assert refused.value.output.strip().splitlines()[0] == "no", check  # then warnings


# ------------------------------------------------------------------ the chart's registration


@dataclass(frozen=True)
class ChartWebhook:
    objects: list[dict[str, Any]]
    namespace: str
    opt_in: dict[str, str]


@pytest.fixture
def chart_webhook(kube_cluster: Cluster, tmp_path: Path) -> Iterator[ChartWebhook]:
    """keyferry's webhook serving the chart's webhook.yaml on 127.0.0.1, and the chart
    rendered with webhook.url pointing at it; the opt-in label keeps other tests' pods out."""
    run = secrets.token_hex(3)
    # The chart's default opt-in label, and this run's own (helm merges the two selectors).
    opt_in = {"keyferry.io/injection": "enabled", f"keyferry.test/chart-{run}": "on"}
    ca = new_ca(tmp_path, "ca", "keyferry chart test CA")
    serving = ca.issue(tmp_path, "serving", "keyferry-webhook", ip_addresses=(LOOPBACK,))
    bundle = base64.b64encode(ca.pem()).decode()
    values = [
        "--set=webhook.clusterName=a",
        "--set=webhook.tls.mode=existingSecret",
        "--set=webhook.tls.existingSecret=webhook-tls",
        f"--set=webhook.tls.caBundle={bundle}",
        f"--set-string=webhook.namespaceSelector.matchLabels.keyferry\\.test/chart-{run}=on",
        "--set=images.agent.repository=registry.example/keyferry/agent",
        "--set=images.agent.tag=chart-test",
        f"--set=fullnameOverride=keyferry-{run}",
    ]
    first = render(kube_cluster, f"keyferry-{run}", *values)
    config = WebhookConfig.model_validate(
        yaml.safe_load(_config_map(first, f"keyferry-{run}-webhook-config", "webhook.yaml"))
    )
    server = WebhookServer(config, server_context(serving.cert, serving.key))
    url = f"https://{LOOPBACK}:{server.start()}{MUTATE_PATH}"
    objects = render(kube_cluster, f"keyferry-{run}", *values, f"--set=webhook.url={url}")
    registration_doc = one(objects, "MutatingWebhookConfiguration")
    try:
        kube_cluster.kubectl("apply", "--filename=-", stdin=as_yaml([registration_doc]))
        yield ChartWebhook(objects, f"keyferry-{run}", opt_in)
    finally:
        name = registration_doc["metadata"]["name"]
        kube_cluster.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        server.stop()


def test_chart_registration_makes_the_api_server_mutate_pods(
    kube_cluster: Cluster, chart_webhook: ChartWebhook
) -> None:
    release_namespace, opt_in = chart_webhook.namespace, chart_webhook.opt_in
    annotations = {"keyferry.io/inject": "true", "keyferry.io/role.db": "orders-db-ro"}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "annotations": annotations},
        "spec": {
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
            "containers": [{"name": "app", "image": "keyferry/smoke:0.1.0"}],
        },
    }
    with kube_cluster.api_client() as api:
        v1 = core(api)
        namespace = new_namespace(api, "chart-inject", labels=opt_in)
        # The release's own namespace carries the opt-in label too, and is still never sent.
        v1.create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=release_namespace, labels=opt_in))
        )

        def mutated() -> dict[str, Any] | None:
            raw = v1.create_namespaced_pod(namespace, body, _preload_content=False)
            stored: dict[str, Any] = json.loads(raw.data)
            init = stored["spec"].get("initContainers") or []
            return stored if any(c["name"] == "keyferry-agent" for c in init) else None

        stored = eventually(mutated, "the chart's registration sending pods to the webhook")
        raw = v1.create_namespaced_pod(release_namespace, body, _preload_content=False)
        own: dict[str, Any] = json.loads(raw.data)
        unlabelled = new_namespace(api, "chart-plain")
        raw = v1.create_namespaced_pod(unlabelled, body, _preload_content=False)
        plain: dict[str, Any] = json.loads(raw.data)

    (agent,) = [c for c in stored["spec"]["initContainers"] if c["name"] == "keyferry-agent"]
    assert agent["image"] == "registry.example/keyferry/agent:chart-test"
    spec = json.loads(next(e["value"] for e in agent["env"] if e["name"] == "KEYFERRY_AGENT_SPEC"))
    assert spec["cluster"] == "a"
    # The fullname is keyferry-<run>, and so is the release namespace here.
    assert spec["broker_address"] == f"{release_namespace}-broker.{release_namespace}.svc:8443"
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    token = volumes["keyferry-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "keyferry:a"
    for untouched in (own, plain):
        assert "initContainers" not in untouched["spec"]


# ------------------------------------------------------------------ helm install and upgrade


def test_install_and_upgrade_keep_the_generated_webhook_certificate(kube_cluster: Cluster) -> None:
    """tls.mode helm: the CA and serving pair made at install survive `helm upgrade` (the
    chart reads its own Secret back with lookup), and caBundle stays that CA."""
    run = secrets.token_hex(3)
    namespace, release = f"keyferry-{run}", f"kf-{run}"
    values = [
        f"--namespace={namespace}",
        "--create-namespace",
        # Only namespaces with this label are sent to the (never running) webhook.
        f"--set-string=webhook.namespaceSelector.matchLabels.keyferry\\.test/install-{run}=on",
    ]
    installed = kube_cluster.helm("install", release, str(CHART), *values)
    assert "WARNING: broker.tls.workloadSecret is empty" in installed
    try:
        secret_name = f"{release}-keyferry-webhook-tls"
        hook_name = f"{release}-keyferry-webhook"

        def current() -> tuple[dict[str, str], str]:
            secret = json.loads(
                kube_cluster.kubectl("get", "secret", secret_name, "-n", namespace, "-o", "json")
            )
            hook = json.loads(
                kube_cluster.kubectl("get", "mutatingwebhookconfiguration", hook_name, "-o", "json")
            )
            return secret["data"], hook["webhooks"][0]["clientConfig"]["caBundle"]

        first, first_bundle = current()
        assert first_bundle == first["ca.crt"]
        kube_cluster.helm("upgrade", release, str(CHART), *values, "--set=webhook.replicas=3")
        second, second_bundle = current()
        assert second == first
        assert second_bundle == first_bundle
        deployment = json.loads(
            kube_cluster.kubectl("get", "deployment", hook_name, "-n", namespace, "-o", "json")
        )
        assert deployment["spec"]["replicas"] == 3
    finally:
        kube_cluster.helm("uninstall", release, f"--namespace={namespace}", "--wait")
