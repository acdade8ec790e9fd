"""`mutate`, table-driven: a pod in, the exact JSON Patch operations (or the refusal) out."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from injector.contract import AGENT_SPEC_ENV, AgentSpec, Mode, Signal
from injector.webhook.config import AgentConfig, BrokerEndpoint, WebhookConfig
from injector.webhook.mutate import mutate
from injector.webhook.review import AdmissionRequest, AdmissionResponse

CONFIG = WebhookConfig(
    cluster_name="east",
    namespace="keyferry-system",
    agent=AgentConfig(image="keyferry/agent:test"),
    broker=BrokerEndpoint(address="broker.keyferry.svc:8443", ca_pem="PEM"),
)
MOUNT = {"name": "keyferry-secrets", "mountPath": "/keyferry/secrets", "readOnly": True}
VOLUMES = [
    {"name": "keyferry-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    {
        "name": "keyferry-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "keyferry:east",
                        "expirationSeconds": 600,
                        "path": "token",
                    }
                }
            ]
        },
    },
    {"name": "keyferry-no-api-token", "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}},
]
SPEC = {
    "version": 1,
    "mode": "sidecar",
    "cluster": "east",
    "broker_address": "broker.keyferry.svc:8443",
    "broker_ca_pem": "PEM",
    "directory": "/keyferry/secrets",
    "token_path": "/keyferry/token/token",
    "file_mode": 0o440,
    "credentials": [{"name": "db", "role": "orders-db-ro", "format": None}],
    "on_rotate": None,
    "backoff_base_seconds": 1.0,
    "backoff_cap_seconds": 30.0,
}


def agent(
    spec: dict[str, Any] | None = None, user: int = 1000, group: int | None = None
) -> dict[str, Any]:
    """The agent container exactly as the webhook must write it (sidecar mode)."""
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if group is not None:
        security["runAsGroup"] = group
    return {
        "name": "keyferry-agent",
        "image": "keyferry/agent:test",
        "imagePullPolicy": "IfNotPresent",
        "command": ["keyferry", "agent"],
        "args": ["run"],
        "env": [{"name": AGENT_SPEC_ENV, "value": json.dumps(spec or SPEC)}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": security,
        "volumeMounts": [
            {"name": "keyferry-secrets", "mountPath": "/keyferry/secrets"},
            {"name": "keyferry-token", "mountPath": "/keyferry/token", "readOnly": True},
            {
                "name": "keyferry-no-api-token",
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                "readOnly": True,
            },
        ],
        "restartPolicy": "Always",
        "startupProbe": {
            "exec": {"command": ["python3", "-I", "-m", "injector.probe"]},
            "timeoutSeconds": 1,
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "exec": {"command": ["python3", "-I", "-m", "injector.probe"]},
            "timeoutSeconds": 1,
            "periodSeconds": 5,
            "failureThreshold": 1,
        },
    }


def init_only_agent(spec: dict[str, Any]) -> dict[str, Any]:
    container = agent(spec)
    del container["restartPolicy"], container["startupProbe"], container["readinessProbe"]
    return container


def pod(
    annotations: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    **pod_spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "annotations": annotations or {}},
        "spec": spec
        or {
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "app", "image": "app:1"}],
            **pod_spec,
        },
    }


def request(obj: dict[str, Any], namespace: str = "shop", **fields: Any) -> AdmissionRequest:
    return AdmissionRequest.model_validate(
        {
            "uid": "0000-1111",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": obj,
            **fields,
        }
    )


def spec_json(**changes: Any) -> dict[str, Any]:
    return {**SPEC, **changes}


INJECT = {"keyferry.io/inject": "true", "keyferry.io/role.db": "orders-db-ro"}

# (case, pod, expected JSON Patch operations)
PATCHES: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "minimal sidecar",
        pod(INJECT),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {"op": "add", "path": "/spec/initContainers", "value": [agent()]},
        ],
    ),
    (
        "init-only",
        pod({**INJECT, "keyferry.io/mode": "init-only"}),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {
                "op": "add",
                "path": "/spec/initContainers",
                "value": [init_only_agent(spec_json(mode="init-only"))],
            },
        ],
    ),
    (
        "existing volumes, mounts and init containers: append, agent first",
        pod(
            INJECT,
            spec={
                "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
                "initContainers": [{"name": "migrate", "image": "m:1"}],
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    },
                    {"name": "log", "image": "log:1"},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts/-", "value": MOUNT},
            {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/initContainers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes/-", "value": VOLUMES[0]},
            {"op": "add", "path": "/spec/volumes/-", "value": VOLUMES[1]},
            {"op": "add", "path": "/spec/volumes/-", "value": VOLUMES[2]},
            {"op": "add", "path": "/spec/initContainers/0", "value": agent(group=3000)},
        ],
    ),
    (
        "formats, several credentials, signal",
        pod(
            {
                **INJECT,
                "keyferry.io/role.aws": "s3-reader",
                "keyferry.io/format.aws": "aws-credentials",
                "keyferry.io/on-rotate": "signal:SIGHUP",
            },
            shareProcessNamespace=True,
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {
                "op": "add",
                "path": "/spec/initContainers",
                "value": [
                    agent(
                        spec_json(
                            credentials=[
                                {"name": "aws", "role": "s3-reader", "format": "aws-credentials"},
                                {"name": "db", "role": "orders-db-ro", "format": None},
                            ],
                            on_rotate="SIGHUP",
                        )
                    )
                ],
            },
        ],
    ),
    (
        "restart: a marker in each named container, the RestartSpec in the agent's spec",
        pod(
            {
                **INJECT,
                "keyferry.io/on-rotate": "restart",
                "keyferry.io/restart-containers": "app",
                "keyferry.io/restart-grace-seconds": "12",
            },
            spec={
                "shareProcessNamespace": True,
                "securityContext": {"runAsUser": 1000},
                "containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
                    {"name": "log", "image": "log:1"},
                ],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]},
            {
                "op": "add",
                "path": "/spec/containers/0/env/-",
                "value": {"name": "KEYFERRY_CONTAINER", "value": "app"},
            },
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {
                "op": "add",
                "path": "/spec/initContainers",
                "value": [
                    agent(
                        spec_json(
                            restart={
                                "containers": ["app"],
                                "grace_seconds": 12,
                                "coalesce_seconds": 2.0,
                                "min_spacing_seconds": 660.0,
                            }
                        )
                    )
                ],
            },
        ],
    ),
    (
        "restart by default: every app container",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart"},
            spec={
                "shareProcessNamespace": True,
                "restartPolicy": "Always",
                "securityContext": {"runAsUser": 1000},
                "containers": [
                    {"name": "app", "image": "app:1"},
                    {"name": "worker", "image": "app:1"},
                ],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]},
            {
                "op": "add",
                "path": "/spec/containers/0/env",
                "value": [{"name": "KEYFERRY_CONTAINER", "value": "app"}],
            },
            {
                "op": "add",
                "path": "/spec/containers/1/env",
                "value": [{"name": "KEYFERRY_CONTAINER", "value": "worker"}],
            },
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {
                "op": "add",
                "path": "/spec/initContainers",
                "value": [
                    agent(
                        spec_json(
                            restart={
                                "containers": ["app", "worker"],
                                "grace_seconds": 30,
                                "coalesce_seconds": 2.0,
                                "min_spacing_seconds": 660.0,
                            }
                        )
                    )
                ],
            },
        ],
    ),
    (
        "container runAsUser overrides the pod's",
        pod(
            INJECT,
            spec={
                "securityContext": {"runAsUser": 5},
                "containers": [
                    {"name": "app", "image": "app:1", "securityContext": {"runAsUser": 2000}}
                ],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {"op": "add", "path": "/spec/initContainers", "value": [agent(user=2000)]},
        ],
    ),
    (
        "app UID unknown but fsGroup set: the agent's own UID, files group-readable",
        pod(
            INJECT,
            spec={
                "securityContext": {"fsGroup": 4000},
                "containers": [{"name": "app", "image": "app:1"}],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {"op": "add", "path": "/spec/initContainers", "value": [agent(user=65532)]},
        ],
    ),
    (
        "app containers with different UIDs and fsGroup",
        pod(
            INJECT,
            spec={
                "securityContext": {"fsGroup": 4000},
                "containers": [
                    {"name": "a", "image": "a:1", "securityContext": {"runAsUser": 1001}},
                    {"name": "b", "image": "b:1", "securityContext": {"runAsUser": 1002}},
                ],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {"op": "add", "path": "/spec/initContainers", "value": [agent(user=65532)]},
        ],
    ),
    (
        "a root app reads anything: the agent still runs as non-root",
        pod(
            INJECT,
            spec={
                "securityContext": {"runAsUser": 0},
                "containers": [{"name": "app", "image": "app:1"}],
            },
        ),
        [
            {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [MOUNT]},
            {"op": "add", "path": "/spec/volumes", "value": VOLUMES},
            {"op": "add", "path": "/spec/initContainers", "value": [agent(user=65532)]},
        ],
    ),
]


@pytest.mark.parametrize(
    ("obj", "expected"), [(p, e) for _, p, e in PATCHES], ids=[c for c, _, _ in PATCHES]
)
def test_patch_operations(obj: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    response = mutate(request(obj), CONFIG)
    assert response.allowed
    assert response.patch_type == "JSONPatch"
    operations = response.operations()
    for operation in operations + expected:  # the env value is JSON: compare it parsed
        _parse_spec_env(operation)
    assert operations == expected


@pytest.mark.parametrize("obj", [p for _, p, _ in PATCHES], ids=[c for c, _, _ in PATCHES])
def test_readmission_is_idempotent(obj: dict[str, Any]) -> None:
    mutated = apply(obj, mutate(request(obj), CONFIG).operations())
    again = mutate(request(mutated), CONFIG)
    assert again.allowed
    assert again.patch is None


def test_reinvocation_mounts_a_container_another_webhook_added() -> None:
    mutated = apply(pod(INJECT), mutate(request(pod(INJECT)), CONFIG).operations())
    mutated["spec"]["containers"].append({"name": "mesh-proxy", "image": "proxy:1"})
    again = mutate(request(mutated), CONFIG)
    assert again.operations() == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]}
    ]


def test_agent_spec_env_parses_as_the_agent_will_read_it() -> None:
    operations = mutate(request(pod(INJECT)), CONFIG).operations()
    container = operations[-1]["value"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    spec = AgentSpec.model_validate_json(env[AGENT_SPEC_ENV])
    assert spec.cluster == "east"
    assert spec.mode is Mode.SIDECAR
    assert spec.credentials[0].role == "orders-db-ro"
    assert spec.token_path.startswith(CONFIG.token_mount_path + "/")
    assert spec.directory == CONFIG.mount_path


def test_only_config_chooses_addresses_and_images() -> None:
    other = CONFIG.model_copy(
        update={
            "cluster_name": "west",
            "agent": AgentConfig(image="mirror.internal/agent:2", run_as_user=7),
            "broker": BrokerEndpoint(address="10.0.0.1:9443"),
            "token_expiration_seconds": 900,
        }
    )
    operations = mutate(request(pod(INJECT)), other).operations()
    volumes, container = operations[1]["value"], operations[2]["value"][0]
    token = volumes[1]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "keyferry:west", "expirationSeconds": 900, "path": "token"}
    assert container["image"] == "mirror.internal/agent:2"
    spec = AgentSpec.model_validate_json(container["env"][0]["value"])
    assert spec.broker_address == "10.0.0.1:9443"
    assert spec.broker_ca_pem is None


def test_the_agents_backoff_comes_from_the_config() -> None:
    slow = AgentConfig(image="keyferry/agent:x", backoff_base_seconds=2.5, backoff_cap_seconds=90)
    operations = mutate(request(pod(INJECT)), CONFIG.model_copy(update={"agent": slow}))
    container = operations.operations()[-1]["value"][0]
    spec = AgentSpec.model_validate_json(container["env"][0]["value"])
    assert (spec.backoff_base_seconds, spec.backoff_cap_seconds) == (2.5, 90.0)


def test_the_agents_tracing_variables_come_from_the_config() -> None:
    traced = AgentConfig(
        image="keyferry/agent:x",
        env={"OTEL_SERVICE_NAME": "keyferry-agent", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
    )
    operations = mutate(request(pod(INJECT)), CONFIG.model_copy(update={"agent": traced}))
    container = operations.operations()[-1]["value"][0]
    assert [e["name"] for e in container["env"]] == [
        AGENT_SPEC_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ]


@pytest.mark.parametrize(
    "env",
    [{"KEYFERRY_AGENT_SPEC": "{}"}, {"PATH": "/usr/bin"}, {f"OTEL_X{n}": "v" for n in range(17)}],
    ids=["the spec's own variable", "not OTEL_", "more than 16"],
)
def test_the_agents_extra_variables_are_otel_ones_only(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="env"):
        AgentConfig(image="keyferry/agent:x", env=env)


NOT_MINE = [
    ("no annotations", request(pod())),
    ("inject false", request(pod({"keyferry.io/inject": "false"}))),
    ("kube-system", request(pod(INJECT), namespace="kube-system")),
    ("the webhook's own namespace", request(pod(INJECT), namespace="keyferry-system")),
    ("UPDATE", request(pod(INJECT), operation="UPDATE")),
    ("a subresource", request(pod(INJECT), subResource="ephemeralcontainers")),
    (
        "not a pod",
        request(
            {"kind": "ConfigMap"},
            kind={"group": "", "version": "v1", "kind": "ConfigMap"},
            resource={"group": "", "version": "v1", "resource": "configmaps"},
        ),
    ),
]


@pytest.mark.parametrize("review", [r for _, r in NOT_MINE], ids=[c for c, _ in NOT_MINE])
def test_allowed_without_patch(review: AdmissionRequest) -> None:
    response = mutate(review, CONFIG)
    assert response == AdmissionResponse(uid="0000-1111", allowed=True)


def test_dry_run_is_answered_like_a_real_admission() -> None:
    real = mutate(request(pod(INJECT)), CONFIG)
    dry = mutate(request(pod(INJECT), dryRun=True), CONFIG)
    assert dry == real


def test_keyferry_annotations_without_inject_warn() -> None:
    response = mutate(request(pod({"keyferry.io/role.db": "orders-db-ro"})), CONFIG)
    assert response.allowed
    assert response.patch is None
    assert response.warnings == [
        'keyferry: keyferry.io/role.db ignored: keyferry.io/inject is not "true"'
    ]


# (case, pod, words the refusal must say)
REFUSALS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "unknown keyferry key",
        pod({**INJECT, "keyferry.io/image": "evil:1"}),
        ["annotation keyferry.io/image:", "not a keyferry annotation"],
    ),
    (
        "signal without shareProcessNamespace",
        pod({**INJECT, "keyferry.io/on-rotate": "signal:SIGHUP"}),
        ["annotation keyferry.io/on-rotate:", "shareProcessNamespace: true"],
    ),
    (
        "signal in init-only mode",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "signal:SIGHUP", "keyferry.io/mode": "init-only"},
            shareProcessNamespace=True,
        ),
        ["annotation keyferry.io/on-rotate:", "never rotates"],
    ),
    (
        "signal across UIDs",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "signal:SIGUSR1"},
            spec={
                "shareProcessNamespace": True,
                "securityContext": {"fsGroup": 4000},
                "containers": [{"name": "app", "image": "app:1"}],
            },
        ),
        ["annotation keyferry.io/on-rotate:", "runAsUser"],
    ),
    (
        "restart without shareProcessNamespace",
        pod({**INJECT, "keyferry.io/on-rotate": "restart"}),
        [
            "annotation keyferry.io/on-rotate:",
            "restarting the app's containers",
            "shareProcessNamespace: true",
        ],
    ),
    (
        "restart in init-only mode",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart", "keyferry.io/mode": "init-only"},
            shareProcessNamespace=True,
        ),
        ["annotation keyferry.io/on-rotate:", "never restarts"],
    ),
    (
        "restart with restartPolicy Never",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart"},
            shareProcessNamespace=True,
            restartPolicy="Never",
        ),
        [
            "pod field spec.restartPolicy:",
            "restartPolicy Never",
            "set restartPolicy: Always; a Job should use keyferry.io/mode: init-only",
        ],
    ),
    (
        "restart with restartPolicy OnFailure",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart"},
            shareProcessNamespace=True,
            restartPolicy="OnFailure",
        ),
        ["pod field spec.restartPolicy:", "restartPolicy OnFailure", "init-only"],
    ),
    (
        "restart across UIDs",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart"},
            spec={
                "shareProcessNamespace": True,
                "securityContext": {"fsGroup": 4000},
                "containers": [{"name": "app", "image": "app:1"}],
            },
        ),
        ["annotation keyferry.io/on-rotate:", "runAsUser"],
    ),
    (
        "restart a container the pod does not have",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart", "keyferry.io/restart-containers": "web"},
            shareProcessNamespace=True,
        ),
        ["annotation keyferry.io/restart-containers:", "no container 'web'", "app containers"],
    ),
    (
        "restart keyferry's agent",
        pod(
            {
                **INJECT,
                "keyferry.io/on-rotate": "restart",
                "keyferry.io/restart-containers": "app,keyferry-agent",
            },
            shareProcessNamespace=True,
        ),
        ["annotation keyferry.io/restart-containers:", "'keyferry-agent'"],
    ),
    (
        "restart another tool's native sidecar",
        pod(
            {
                **INJECT,
                "keyferry.io/on-rotate": "restart",
                "keyferry.io/restart-containers": "mesh",
            },
            shareProcessNamespace=True,
            initContainers=[{"name": "mesh", "image": "mesh:1", "restartPolicy": "Always"}],
        ),
        ["annotation keyferry.io/restart-containers:", "init container", "only app containers"],
    ),
    (
        "restart marker spoofed",
        pod(
            {**INJECT, "keyferry.io/on-rotate": "restart"},
            shareProcessNamespace=True,
            containers=[
                {
                    "name": "app",
                    "image": "app:1",
                    "env": [{"name": "KEYFERRY_CONTAINER", "value": "other"}],
                }
            ],
        ),
        ["pod field spec.containers (app).env:", "KEYFERRY_CONTAINER", "rename"],
    ),
    (
        "app user unknown and no fsGroup",
        pod(INJECT, spec={"containers": [{"name": "app", "image": "app:1"}]}),
        ["pod field spec.securityContext:", "runAsUser", "fsGroup"],
    ),
    (
        "some app containers without a UID",
        pod(
            INJECT,
            spec={
                "containers": [
                    {"name": "a", "image": "a:1", "securityContext": {"runAsUser": 1000}},
                    {"name": "b", "image": "b:1"},
                ]
            },
        ),
        ["pod field spec.securityContext:", "fsGroup"],
    ),
    (
        "something already at the mount path",
        pod(
            INJECT,
            containers=[
                {
                    "name": "app",
                    "image": "app:1",
                    "volumeMounts": [{"name": "mine", "mountPath": "/keyferry/secrets"}],
                }
            ],
        ),
        ["containers/0 (app).volumeMounts", "mount yours elsewhere"],
    ),
    (
        "reserved volume name",
        pod(INJECT, volumes=[{"name": "keyferry-token", "emptyDir": {}}]),
        ["keyferry-token exist(s)", "rename yours"],
    ),
    (
        "reserved container name",
        pod(INJECT, containers=[{"name": "keyferry-agent", "image": "x:1"}]),
        ["an app container is named keyferry-agent", "rename yours"],
    ),
]


@pytest.mark.parametrize(
    ("obj", "words"), [(p, w) for _, p, w in REFUSALS], ids=[c for c, _, _ in REFUSALS]
)
def test_refusals(obj: dict[str, Any], words: list[str]) -> None:
    response = mutate(request(obj), CONFIG)
    assert not response.allowed
    assert response.patch is None
    assert response.status is not None
    assert response.status.code == 400
    for word in words:
        assert word in response.status.message


def test_signal_spec_reaches_the_agent() -> None:
    obj = pod({**INJECT, "keyferry.io/on-rotate": "signal:SIGHUP"}, shareProcessNamespace=True)
    container = mutate(request(obj), CONFIG).operations()[-1]["value"][0]
    spec = AgentSpec.model_validate_json(container["env"][0]["value"])
    assert spec.on_rotate is Signal.SIGHUP
    assert spec.credentials[0].format is None


def test_restart_containers_added_later_are_never_marked() -> None:
    """Another webhook's container added after keyferry's admission is not restarted."""
    obj = pod({**INJECT, "keyferry.io/on-rotate": "restart"}, shareProcessNamespace=True)
    mutated = apply(obj, mutate(request(obj), CONFIG).operations())
    mutated["spec"]["containers"].append({"name": "mesh-proxy", "image": "proxy:1"})
    again = mutate(request(mutated), CONFIG)
    assert again.operations() == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [MOUNT]}
    ]
    agent_env = mutated["spec"]["initContainers"][0]["env"][0]["value"]
    assert AgentSpec.model_validate_json(agent_env).restart.containers == ("app",)  # type: ignore[union-attr]


def test_a_spec_without_restart_omits_the_field() -> None:
    """An agent image older than the restart field still reads the spec of other pods."""
    container = mutate(request(pod(INJECT)), CONFIG).operations()[-1]["value"][0]
    assert "restart" not in json.loads(container["env"][0]["value"])


def test_unreadable_pod_is_refused() -> None:
    response = mutate(request({"spec": {"containers": "nope"}}), CONFIG)
    assert not response.allowed


def _parse_spec_env(operation: dict[str, Any]) -> None:
    value = operation["value"]
    containers = value if isinstance(value, list) else [value]
    for container in containers:
        for env in container.get("env", []) if isinstance(container, dict) else []:
            if env["name"] == AGENT_SPEC_ENV and isinstance(env["value"], str):
                env["value"] = json.loads(env["value"])


def apply(obj: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply add-only JSON Patch operations, as the API server does."""
    result = copy.deepcopy(obj)
    for operation in operations:
        assert operation["op"] == "add"
        *parents, last = operation["path"].lstrip("/").split("/")
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        value = copy.deepcopy(operation["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                target.insert(int(last), value)
        else:
            target[last] = value
    return result
