"""Principals and resources as typed models, and their Cedar entity form."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.models import PodKey


class Action(StrEnum):
    ISSUE = "issue"
    WATCH = "watch"
    RELEASE = "release"
    RENEW = "renew"
    ROTATE = "rotate"
    ROTATE_ROOT = "rotate_root"
    REVOKE = "revoke"
    REGISTER = "register"
    GRANT = "grant"
    APPROVE = "approve"
    AUDIT = "audit"
    REQUEST_ACCESS = "request_access"
    APPROVE_ACCESS = "approve_access"
    REVOKE_ACCESS = "revoke_access"
    VIEW_ACCESS = "view_access"

    def uid(self) -> dict[str, str]:
        return {"type": "Action", "id": self.value}


def _ref(kind: str, ident: str) -> dict[str, Any]:
    return {"__entity": {"type": kind, "id": ident}}


def _entity(
    kind: str, ident: str, attrs: dict[str, Any], parents: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {"uid": {"type": kind, "id": ident}, "attrs": attrs, "parents": parents or []}


class _Entity(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str = ""

    @property
    def ident(self) -> str:
        raise NotImplementedError

    def uid(self) -> dict[str, str]:
        return {"type": self.kind, "id": self.ident}

    def entities(self) -> list[dict[str, Any]]:
        """This entity and the ones it refers to, in Cedar's JSON entity format."""
        raise NotImplementedError


class ClusterRef(_Entity):
    kind: str = "Cluster"
    name: str = Field(min_length=1)

    @property
    def ident(self) -> str:
        return self.name

    def entities(self) -> list[dict[str, Any]]:
        return [_entity("Cluster", self.name, {})]


class Workload(_Entity):
    """A pod, as proven by its token: the cluster comes from the audience, the rest from claims."""

    kind: str = "Workload"
    cluster: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    service_account: str = Field(min_length=1)
    pod: str = Field(min_length=1)
    pod_uid: str = Field(min_length=1)

    @property
    def ident(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.pod}/{self.pod_uid}"

    @property
    def pod_key(self) -> PodKey:
        return PodKey(self.cluster, self.pod_uid)

    def entities(self) -> list[dict[str, Any]]:
        attrs = {
            "cluster": _ref("Cluster", self.cluster),
            "namespace": self.namespace,
            "service_account": self.service_account,
            "pod": self.pod,
        }
        return [_entity("Workload", self.ident, attrs), *ClusterRef(name=self.cluster).entities()]


class Operator(_Entity):
    kind: str = "Operator"
    name: str = Field(min_length=1)
    groups: tuple[str, ...] = ()
    identity: str | None = None
    """The person behind the certificate (its `urn:keyferry:operator:` name), if given."""

    @property
    def ident(self) -> str:
        return self.name

    @property
    def person(self) -> str:
        """What approvals compare: the identity when the certificate has one, else the
        name (prefixed so the two never collide)."""
        return f"id:{self.identity}" if self.identity else f"cn:{self.name}"

    def entities(self) -> list[dict[str, Any]]:
        parents = [{"type": "Group", "id": group} for group in self.groups]
        groups = [_entity("Group", group, {}) for group in self.groups]
        return [_entity("Operator", self.name, {"name": self.name}, parents), *groups]


class RoleResource(_Entity):
    kind: str = "Role"
    name: str = Field(min_length=1)
    backend: str = Field(min_length=1)

    @property
    def ident(self) -> str:
        return self.name

    def entities(self) -> list[dict[str, Any]]:
        return [_entity("Role", self.name, {"backend": self.backend})]


class LeaseResource(_Entity):
    kind: str = "Lease"
    lease_id: str = Field(min_length=1)
    cluster: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    service_account: str = Field(min_length=1)
    role: RoleResource

    @property
    def ident(self) -> str:
        return self.lease_id

    def entities(self) -> list[dict[str, Any]]:
        attrs = {
            "cluster": _ref("Cluster", self.cluster),
            "namespace": self.namespace,
            "service_account": self.service_account,
            "role": _ref("Role", self.role.name),
        }
        return [
            _entity("Lease", self.lease_id, attrs),
            *self.role.entities(),
            *ClusterRef(name=self.cluster).entities(),
        ]


class GrantResource(_Entity):
    """A just-in-time access grant. `requester` is a reference only: the requester's own
    entity (with its groups) is the principal's when it is the one asking."""

    kind: str = "Grant"
    grant_id: str = Field(min_length=1)
    requester: str = Field(min_length=1)
    duration_seconds: int = Field(ge=0)
    role: RoleResource

    @property
    def ident(self) -> str:
        return self.grant_id

    def entities(self) -> list[dict[str, Any]]:
        attrs = {
            "requester": _ref("Operator", self.requester),
            "role": _ref("Role", self.role.name),
            "duration_seconds": self.duration_seconds,
        }
        return [_entity("Grant", self.grant_id, attrs), *self.role.entities()]


class BrokerResource(_Entity):
    """The broker itself, the resource of broker-wide actions such as reading the audit trail."""

    kind: str = "Broker"

    @property
    def ident(self) -> str:
        return "keyferry"

    def entities(self) -> list[dict[str, Any]]:
        return [_entity("Broker", self.ident, {})]


class ConnectionResource(_Entity):
    """A database connection on a keyferry mount (mount relative to the prefix)."""

    kind: str = "Connection"
    mount: str = Field(min_length=1)
    name: str = Field(min_length=1)

    @property
    def ident(self) -> str:
        return f"{self.mount}/{self.name}"

    def entities(self) -> list[dict[str, Any]]:
        return [_entity("Connection", self.ident, {"mount": self.mount})]


Principal = Workload | Operator
Resource = (
    RoleResource | LeaseResource | ClusterRef | BrokerResource | ConnectionResource | GrantResource
)
