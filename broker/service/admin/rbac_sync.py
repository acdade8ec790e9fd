"""RBAC kept in sync across registered clusters: clusters carry labels, profiles say "group
G gets ClusterRole R (in namespace N, or cluster-wide) in clusters whose labels match", and
the leader makes every cluster so.

Each pass (a leader job, every access.rbac_sync_interval, and at once after an apply)
reads, for every cluster the broker knows, the bindings its profiles ask for: a missing
one is created, one the broker made (the UID it recorded) that was edited is deleted by
that UID and made again, one the broker made that no profile asks for any more is
deleted by its UID. An object of a profile binding's name the broker did not make (another
UID) is never touched: the pass reports it as a conflict. Every change is audited
(`rbac.binding`, reason CREATED, RESTORED or REMOVED). A dry run plans the same changes
with the profiles given, and changes nothing.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.audit import AuditAction, AuditEvent
from broker.clusters.config import NAME as DNS_LABEL
from broker.clusters.rbac import Deleted, ProfileBinding, ProfileBindings
from broker.errors import InvalidRequest, KeyferryError
from broker.policy import Action, BrokerResource, Operator
from broker.store import RbacBindingRecord

from ..common.audit_trail import system_principal
from ..common.callers import Callers
from ..core import Core

log = structlog.get_logger("keyferry.rbac_sync")
SYNC_JOB = "broker.rbac-sync"
MAX_PROFILES = 200
MAX_LABELS = 16
LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
PROFILE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


class Profile(BaseModel):
    """One RBAC profile of a profiles file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="a DNS label of at most 40 characters")
    group: str = Field(min_length=1, max_length=253)
    cluster_role: str = Field(min_length=1, max_length=253)
    clusters: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PROFILE_NAME.fullmatch(value):
            raise ValueError("use a DNS label of at most 40 characters, like oncall-view")
        return value

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("a Kubernetes group name has no spaces or control characters")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.fullmatch(value):
            raise ValueError("a namespace is a DNS label")
        return value

    @field_validator("clusters")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value, "clusters")
        return value

    def binding(self) -> ProfileBinding:
        return ProfileBinding(self.name, self.group, self.cluster_role, self.namespace)

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(key) == want for key, want in self.clusters.items())


class ProfilesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    profiles: list[Profile] = Field(default_factory=list, max_length=MAX_PROFILES)


@dataclass(frozen=True)
class Change:
    """One thing a pass did (or a dry run would do) in one cluster."""

    cluster: str
    action: str  # create, restore, remove, conflict, error
    profile: str
    binding: str
    namespace: str  # "" cluster-wide
    detail: str = ""


def check_labels(labels: dict[str, str], field: str) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(field, f"has {len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise InvalidRequest(
                field, f"{key}={value} is not a Kubernetes-style label; write e.g. env=prod"
            )


def parse_profiles(data: Any, allowed_roles: tuple[str, ...]) -> list[Profile]:
    """A profiles file's content, or InvalidRequest naming what to fix."""
    try:
        parsed = ProfilesFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "profiles"
        raise InvalidRequest(where, first["msg"]) from exc
    names = [p.name for p in parsed.profiles]
    if len(set(names)) != len(names):
        raise InvalidRequest("profiles", "two profiles share a name; names are unique")
    for profile in parsed.profiles:
        if profile.cluster_role not in allowed_roles:
            raise InvalidRequest(
                f"profiles.{profile.name}.cluster_role",
                f"{profile.cluster_role!r} is not one the broker may bind; use one of "
                f"{', '.join(allowed_roles)} (access.cluster_roles)",
            )
    return list(parsed.profiles)


class RbacSync:
    def __init__(self, core: Core, *, callers: Callers, cluster_roles: tuple[str, ...]) -> None:
        self._gate = core.gate
        self._audit = core.audit
        self._rbac = core.store.rbac
        self._callers = callers
        self._clock = core.clock
        self._roles = cluster_roles
        self._one_pass = asyncio.Lock()  # an apply's pass and the job's never interleave

    async def label(
        self,
        operator: Operator,
        cluster: str,
        labels: dict[str, str],
        remove: list[str],
        request_id: str,
    ) -> dict[str, str]:
        await self._allow(operator, AuditAction.RBAC_LABEL, request_id, cluster=cluster)
        if self._callers.client(cluster) is None:
            raise InvalidRequest(
                "cluster",
                f"{cluster!r} is not a cluster the broker knows (`keyferry clusters list`)",
            )
        check_labels(labels, "labels")
        current = (await self._rbac.labels()).get(cluster, {})
        merged = {k: v for k, v in current.items() if k not in remove} | labels
        check_labels(merged, "labels")
        return await self._rbac.set_labels(cluster, merged, self._clock())

    async def labels(self, operator: Operator, request_id: str) -> dict[str, dict[str, str]]:
        await self._allow(operator, AuditAction.RBAC_READ, request_id)
        return await self._rbac.labels()

    async def apply(
        self, operator: Operator, data: Any, dry_run: bool, request_id: str
    ) -> list[Change]:
        """Make `data` (a profiles file) the profiles, and sync now; or plan only."""
        await self._allow(operator, AuditAction.RBAC_APPLY, request_id)
        profiles = parse_profiles(data, self._roles)
        if dry_run:
            return await self._pass(profiles, act=False, request_id=request_id)
        specs = {p.name: p.model_dump() for p in profiles}
        await self._rbac.replace_profiles(specs, self._clock())
        return await self._pass(profiles, act=True, request_id=request_id)

    async def sync_once(self) -> int:
        """The leader's pass: how many changes it made."""
        stored = await self._rbac.profiles()
        profiles = [Profile.model_validate(spec) for spec in stored.values()]
        changes = await self._pass(profiles, act=True, request_id=uuid.uuid4().hex)
        return sum(1 for c in changes if c.action in ("create", "restore", "remove"))

    async def _pass(self, profiles: list[Profile], *, act: bool, request_id: str) -> list[Change]:
        async with self._one_pass:
            return await self._pass_now(profiles, act=act, request_id=request_id)

    async def _pass_now(
        self, profiles: list[Profile], *, act: bool, request_id: str
    ) -> list[Change]:
        labels = await self._rbac.labels()
        changes: list[Change] = []
        for client in sorted(self._callers.clients(), key=lambda c: c.config.name):
            cluster = client.config.name
            try:
                changes += await self._cluster(
                    ProfileBindings(client),
                    [p for p in profiles if p.selects(labels.get(cluster, {}))],
                    act=act,
                    request_id=request_id,
                )
            except KeyferryError as error:
                log.warning("RBAC sync of a cluster failed", cluster=cluster, error=error.message)
                changes.append(Change(cluster, "error", "", "", "", error.message))
        return changes

    async def _cluster(
        self, bindings: ProfileBindings, profiles: list[Profile], *, act: bool, request_id: str
    ) -> list[Change]:
        cluster = bindings.name
        owned = {(r.name, r.namespace): r for r in await self._rbac.bindings(cluster)}
        wanted = {(p.binding().name, p.namespace or ""): p for p in profiles}
        changes: list[Change] = []
        for key, profile in sorted(wanted.items()):
            want = profile.binding()
            found = await bindings.find(want)
            record = owned.get(key)
            change = Change(cluster, "", profile.name, want.name, profile.namespace or "")
            if found is None:
                action = "restore" if record is not None else "create"
            elif record is not None and found.uid == record.uid:
                if found.matches:
                    continue
                action = "restore"
                if act:
                    await bindings.delete(want.name, want.namespace, record.uid)
            else:
                changes.append(
                    Change(
                        cluster,
                        "conflict",
                        profile.name,
                        want.name,
                        profile.namespace or "",
                        "a binding of this name that keyferry did not make: left alone",
                    )
                )
                continue
            if act:
                uid = await bindings.create(want)
                if uid is None:
                    changes.append(
                        Change(
                            cluster, "conflict", profile.name, want.name, key[1], "made meanwhile"
                        )
                    )
                    continue
                await self._rbac.record_binding(
                    RbacBindingRecord(
                        cluster=cluster,
                        name=want.name,
                        namespace=key[1],
                        profile=profile.name,
                        uid=uid,
                        updated_at=self._clock(),
                    )
                )
                await self._record(cluster, key, action, request_id)
            changes.append(Change(cluster, action, change.profile, want.name, key[1]))
        for key, record in sorted(owned.items()):
            if key in wanted:
                continue
            if act:
                result = await bindings.delete(record.name, record.namespace or None, record.uid)
                await self._rbac.forget_binding(cluster, record.name, record.namespace)
                if result == Deleted.DELETED:
                    await self._record(cluster, key, "remove", request_id)
            changes.append(Change(cluster, "remove", record.profile, record.name, record.namespace))
        return changes

    async def _record(
        self, cluster: str, key: tuple[str, str], action: str, request_id: str
    ) -> None:
        name, namespace = key
        await self._audit.record(
            AuditEvent(
                who=system_principal(SYNC_JOB),
                action=AuditAction.RBAC_BINDING,
                reason={"create": "CREATED", "restore": "RESTORED", "remove": "REMOVED"}[action],
                request_id=request_id,
                cluster=cluster,
                namespace=namespace or None,
                target=name,
            )
        )
        log.info("RBAC binding changed", cluster=cluster, binding=name, action=action)

    async def _allow(
        self, operator: Operator, action: AuditAction, request_id: str, cluster: str | None = None
    ) -> None:
        await self._gate.require(
            operator,
            Action.MANAGE_RBAC,
            BrokerResource(),
            lambda decision: self._audit.operator_decision(
                operator, action, decision, request_id, cluster=cluster
            ),
            f"no policy permits operator {operator.name!r} to label clusters or apply RBAC "
            "profiles (Cedar action 'manage_rbac' on the Broker); ask for a Cedar permit",
        )
