"""`keyferry.io/on-rotate: restart` checked against the pod: which containers the agent may
restart, and the refusals for pods it cannot restart safely.

The containers are app containers (`spec.containers`) only: keyferry's agent and every
init container (other tools' native sidecars among them) are never restarted. Without
`keyferry.io/restart-containers` the default is every app container the pod has when
keyferry admits it; a container another webhook adds later gets no marker, so it is never
restarted either. The kubelet must restart what the agent ends, so the pod's
`restartPolicy` must be Always: a Job's pod (Never, OnFailure) would end instead.
"""

from __future__ import annotations

from injector.contract import RESTART_MARKER_ENV, RestartSpec

from .annotations import (
    MODE,
    ON_ROTATE,
    ON_ROTATE_RESTART,
    RESTART_CONTAINERS,
    RestartRequest,
)
from .errors import InvalidAnnotation, UnsupportedPod
from .pod import Pod

RESTARTED_POLICY = "Always"


def restart_spec(pod: Pod, request: RestartRequest) -> RestartSpec:
    """The agent's RestartSpec for `pod`; a refusal naming the field and the fix otherwise."""
    policy = pod.spec.restart_policy or RESTARTED_POLICY
    if policy != RESTARTED_POLICY:
        raise UnsupportedPod(
            "spec.restartPolicy",
            f"{ON_ROTATE}: {ON_ROTATE_RESTART} ends the app's containers for the kubelet to "
            f"start them again, which restartPolicy {policy} does not do",
            f"set restartPolicy: Always; a Job should use {MODE}: init-only instead (its "
            "credentials are written once and never rotate)",
        )
    apps = [c.name for c in pod.spec.containers]
    names = request.containers if request.containers is not None else tuple(apps)
    others = {c.name for c in pod.spec.init_containers or []}
    for name in names:
        if name in apps:
            continue
        problem = (
            f"{name!r} is an init container (or a sidecar); only app containers are restarted"
            if name in others
            else f"the pod has no container {name!r}"
        )
        raise InvalidAnnotation(
            RESTART_CONTAINERS, problem, f"name app containers of this pod: {', '.join(apps)}"
        )
    for field, containers in (
        ("containers", pod.spec.containers),
        ("initContainers", pod.spec.init_containers or []),
    ):
        for container in containers:
            marked = [e for e in container.env or [] if e.name == RESTART_MARKER_ENV]
            if any(field != "containers" or e.value != container.name for e in marked):
                raise UnsupportedPod(
                    f"spec.{field} ({container.name}).env",
                    f"{RESTART_MARKER_ENV} is keyferry's marker of a restartable container",
                    "rename your variable",
                )
    return RestartSpec(containers=names, grace_seconds=request.grace_seconds)
