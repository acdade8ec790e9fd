"""The JSON Patch that injects a pod: credential volume, token volume, agent, mounts.

Every operation is an `add` computed against the pod as it arrives, and nothing is added
twice: a pod that already carries the agent and both volumes (a reinvocation, or a pod
copied from a mutated one) only gets the mounts its containers still lack, usually none.
"""

from __future__ import annotations

from typing import Any

from injector.contract import (
    AGENT_COMMAND,
    AGENT_SPEC_ENV,
    PROBE_COMMAND,
    RESTART_MARKER_ENV,
    RUN_ARGS,
    AgentSpec,
    Mode,
    RestartSpec,
)

from .annotations import InjectionSpec
from .config import WebhookConfig
from .errors import UnsupportedPod
from .pod import Container, Pod, RunAs
from .review import PatchOperation

AGENT_CONTAINER = "keyferry-agent"
SECRETS_VOLUME = "keyferry-secrets"
TOKEN_VOLUME = "keyferry-token"  # noqa: S105 (a volume name, not a secret)
NO_API_TOKEN_VOLUME = "keyferry-no-api-token"  # noqa: S105 (a volume name, not a secret)
"""An empty volume mounted over the Kubernetes API token's path in the agent only."""
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 (a path)
"""Where the ServiceAccount admission plugin mounts the API token (`kube-api-access-*`)."""
TOKEN_FILE = "token"  # noqa: S105 (a file name, not a secret)
RESERVED_NAMES = (AGENT_CONTAINER, SECRETS_VOLUME, TOKEN_VOLUME, NO_API_TOKEN_VOLUME)
SECRETS_SIZE_LIMIT = "1Mi"
EMPTY_SIZE_LIMIT = "1Ki"
PROBE_PERIOD_SECONDS = 1
READINESS_PERIOD_SECONDS = 5
"""The sidecar's readinessProbe: a file removed at its credential's end (broker away) or on
revocation makes the pod not ready within this many seconds."""


def agent_spec(
    spec: InjectionSpec, config: WebhookConfig, restart: RestartSpec | None = None
) -> AgentSpec:
    return AgentSpec(
        mode=spec.mode,
        cluster=config.cluster_name,
        broker_address=config.broker.address,
        broker_ca_pem=config.broker.ca_pem,
        directory=config.mount_path,
        token_path=f"{config.token_mount_path}/{TOKEN_FILE}",
        credentials=spec.credentials,
        on_rotate=spec.on_rotate,
        restart=restart,
        backoff_base_seconds=config.agent.backoff_base_seconds,
        backoff_cap_seconds=config.agent.backoff_cap_seconds,
    )


def build_patch(
    pod: Pod,
    spec: InjectionSpec,
    config: WebhookConfig,
    run_as: RunAs,
    restart: RestartSpec | None = None,
) -> list[PatchOperation]:
    """The operations that make `pod` an injected pod; empty when it already is one."""
    injected = _already_injected(pod)
    operations = _mount_operations(pod, config)
    if not injected:
        operations += _marker_operations(pod, restart)
        operations += _volume_operations(pod, config)
        container = agent_container(spec, config, run_as, restart)
        operations.append(_agent_operation(pod, container))
    return operations


def agent_container(
    spec: InjectionSpec,
    config: WebhookConfig,
    run_as: RunAs,
    restart: RestartSpec | None = None,
) -> dict[str, Any]:
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": run_as.user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as.group is not None:
        security["runAsGroup"] = run_as.group
    resources = config.agent.resources
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": config.agent.image,
        "imagePullPolicy": config.agent.image_pull_policy,
        "command": list(AGENT_COMMAND),
        "args": list(RUN_ARGS),
        "env": [
            {"name": AGENT_SPEC_ENV, "value": agent_spec(spec, config, restart).to_json()},
            *({"name": name, "value": value} for name, value in sorted(config.agent.env.items())),
        ],
        "resources": {
            "requests": resources.requests.model_dump(exclude_none=True),
            "limits": resources.limits.model_dump(exclude_none=True),
        },
        "securityContext": security,
        "volumeMounts": [
            {"name": SECRETS_VOLUME, "mountPath": config.mount_path},
            {"name": TOKEN_VOLUME, "mountPath": config.token_mount_path, "readOnly": True},
            # Something at this path keeps the ServiceAccount admission plugin from mounting
            # the Kubernetes API token here, on its first pass or when it is re-run after
            # this patch: the agent only ever uses its keyferry-audience token.
            {"name": NO_API_TOKEN_VOLUME, "mountPath": API_TOKEN_PATH, "readOnly": True},
        ],
    }
    if spec.mode is Mode.SIDECAR:
        check = {"exec": {"command": list(PROBE_COMMAND)}, "timeoutSeconds": 1}
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {
            **check,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": config.agent.startup_timeout_seconds // PROBE_PERIOD_SECONDS,
        }
        container["readinessProbe"] = {
            **check,
            "periodSeconds": READINESS_PERIOD_SECONDS,
            "failureThreshold": 1,
        }
    return container


def volumes(config: WebhookConfig) -> list[dict[str, Any]]:
    token = {
        "audience": config.audience,
        "expirationSeconds": config.token_expiration_seconds,
        "path": TOKEN_FILE,
    }
    return [
        {"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": SECRETS_SIZE_LIMIT}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}},
        {
            "name": NO_API_TOKEN_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": EMPTY_SIZE_LIMIT},
        },
    ]


def _already_injected(pod: Pod) -> bool:
    volume_names = {v.name for v in pod.spec.volumes or []}
    present = {
        AGENT_CONTAINER: any(c.name == AGENT_CONTAINER for c in pod.spec.init_containers or []),
        **{name: name in volume_names for name in (SECRETS_VOLUME, TOKEN_VOLUME)},
        NO_API_TOKEN_VOLUME: NO_API_TOKEN_VOLUME in volume_names,
    }
    if any(c.name == AGENT_CONTAINER for c in pod.spec.containers):
        raise _reserved(f"an app container is named {AGENT_CONTAINER}")
    if all(present.values()):
        return True
    if any(present.values()):
        found = ", ".join(name for name, there in present.items() if there)
        raise _reserved(f"{found} exist(s) but keyferry did not add them all")
    return False


def _reserved(problem: str) -> UnsupportedPod:
    return UnsupportedPod(
        "spec",
        problem,
        f"the container name {AGENT_CONTAINER} and the volume names {SECRETS_VOLUME}, "
        f"{TOKEN_VOLUME} and {NO_API_TOKEN_VOLUME} are keyferry's: rename yours",
    )


def _mount_operations(pod: Pod, config: WebhookConfig) -> list[PatchOperation]:
    mount = {"name": SECRETS_VOLUME, "mountPath": config.mount_path, "readOnly": True}
    operations = []
    targets: list[tuple[str, Container]] = [
        (f"/spec/containers/{i}", c) for i, c in enumerate(pod.spec.containers)
    ]
    targets += [
        (f"/spec/initContainers/{i}", c)
        for i, c in enumerate(pod.spec.init_containers or [])
        if c.name != AGENT_CONTAINER
    ]
    for path, container in targets:
        if any(m.name == SECRETS_VOLUME for m in container.volume_mounts or []):
            continue
        if any(m.mount_path == config.mount_path for m in container.volume_mounts or []):
            raise UnsupportedPod(
                f"{path.removeprefix('/spec/')} ({container.name}).volumeMounts",
                f"something is already mounted at {config.mount_path}",
                "keyferry mounts the credential files there: mount yours elsewhere",
            )
        if container.volume_mounts is None:
            operations.append(PatchOperation(path=f"{path}/volumeMounts", value=[mount]))
        else:
            operations.append(PatchOperation(path=f"{path}/volumeMounts/-", value=mount))
    return operations


def _marker_operations(pod: Pod, restart: RestartSpec | None) -> list[PatchOperation]:
    """`KEYFERRY_CONTAINER=<name>` in each container the agent may restart: how it finds the
    container's processes in /proc without an API token."""
    if restart is None:
        return []
    operations = []
    for index, container in enumerate(pod.spec.containers):
        if container.name not in restart.containers:
            continue
        if any(e.name == RESTART_MARKER_ENV for e in container.env or []):
            continue  # the pod's author copied it from an injected pod: same value, checked
        marker = {"name": RESTART_MARKER_ENV, "value": container.name}
        path = f"/spec/containers/{index}/env"
        if container.env is None:
            operations.append(PatchOperation(path=path, value=[marker]))
        else:
            operations.append(PatchOperation(path=f"{path}/-", value=marker))
    return operations


def _volume_operations(pod: Pod, config: WebhookConfig) -> list[PatchOperation]:
    if pod.spec.volumes is None:
        return [PatchOperation(path="/spec/volumes", value=volumes(config))]
    return [PatchOperation(path="/spec/volumes/-", value=v) for v in volumes(config)]


def _agent_operation(pod: Pod, container: dict[str, Any]) -> PatchOperation:
    # First of the init containers: later init containers (migrations...) see the files too.
    if pod.spec.init_containers is None:
        return PatchOperation(path="/spec/initContainers", value=[container])
    return PatchOperation(path="/spec/initContainers/0", value=container)
