"""The parts of a pod the webhook reads, and who the agent runs as.

Pods arrive as the API server's JSON; these models read only the fields keyferry decides
by and ignore the rest (the patch never rewrites anything it did not add).

File ownership (docs/injector.md, "Who can read the files"): the agent writes every file
0440. It runs as the app's own UID when all app containers name one non-root UID, so the
app reads its files as their owner and the agent may signal it without any capability.
Otherwise the pod's `fsGroup` must be set: the kubelet gives the volume that group, the
files inherit it, and every app container (any UID) has it as a supplemental group.
A pod with neither is refused with that fix.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SecurityContext(_Camel):
    run_as_user: int | None = None
    run_as_group: int | None = None


class PodSecurityContext(SecurityContext):
    fs_group: int | None = None


class VolumeMount(_Camel):
    name: str
    mount_path: str


class EnvVar(_Camel):
    name: str
    value: str | None = None


class Container(_Camel):
    name: str
    env: list[EnvVar] | None = None
    security_context: SecurityContext | None = None
    volume_mounts: list[VolumeMount] | None = None


class Volume(_Camel):
    name: str


class PodSpec(_Camel):
    containers: list[Container] = Field(default_factory=list)
    init_containers: list[Container] | None = None
    volumes: list[Volume] | None = None
    security_context: PodSecurityContext | None = None
    share_process_namespace: bool | None = None
    restart_policy: str | None = None
    """None: the API server's default, Always."""


class ObjectMeta(_Camel):
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class Pod(_Camel):
    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec

    @classmethod
    def from_object(cls, raw: dict[str, Any]) -> Pod:
        return cls.model_validate(raw)


class RunAs(BaseModel):
    """The agent's uid and gid; `readable_by_owner`: the app reads its files as their owner."""

    model_config = ConfigDict(frozen=True)

    user: int
    group: int | None
    readable_by_owner: bool


def app_users(pod: Pod) -> list[int | None]:
    """Each app container's runAsUser: its own, else the pod's, else None (the image's)."""
    pod_context = pod.spec.security_context or PodSecurityContext()
    return [
        _first(
            c.security_context.run_as_user if c.security_context else None, pod_context.run_as_user
        )
        for c in pod.spec.containers
    ]


def app_groups(pod: Pod) -> list[int | None]:
    pod_context = pod.spec.security_context or PodSecurityContext()
    return [
        _first(
            c.security_context.run_as_group if c.security_context else None,
            pod_context.run_as_group,
        )
        for c in pod.spec.containers
    ]


def _first(own: int | None, inherited: int | None) -> int | None:
    return own if own is not None else inherited


def shared_app_user(pod: Pod) -> int | None:
    """The one non-root UID every non-root app container runs as, if the pod says so."""
    users = app_users(pod)
    if None in users:
        return None
    non_root = {u for u in users if u != 0}
    return non_root.pop() if len(non_root) == 1 else None


def choose_run_as(pod: Pod, fallback_user: int) -> RunAs | None:
    """Who the agent runs as so the app can read the files; None when the pod does not say."""
    user = shared_app_user(pod)
    if user is not None:
        groups = set(app_groups(pod))
        group = groups.pop() if len(groups) == 1 else None
        return RunAs(user=user, group=group, readable_by_owner=True)
    fs_group = pod.spec.security_context.fs_group if pod.spec.security_context else None
    if fs_group is not None or set(app_users(pod)) == {0}:
        return RunAs(user=fallback_user, group=None, readable_by_owner=False)
    return None
