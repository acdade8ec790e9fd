"""Just-in-time access to a member cluster: a grant of a ClusterRole in one namespace (or
all), requested, approved by someone else, issued as a kubeconfig, and gone at its end.

It is an access grant like a credential grant (access_grants.py): the same table and
states, approve/deny/revoke/list/get by the same calls and Cedar actions, the same expiry
job. What differs is here: the request (Cedar `request_cluster_access` on a
ClusterAccess resource; `request_cluster_wide_access` for all namespaces, which only a
permit naming that action allows), what issue makes in the member cluster, and what the
grant's end removes (AccessFlow calls `grant_ended`).

On issue the broker creates (broker/clusters/rbac.py) a ServiceAccount for the grant in
its own namespace (access.cluster_namespace), a RoleBinding in the granted namespace (or a
ClusterRoleBinding) of it to the ClusterRole, and hands out a TokenRequest token whose
expiry is the grant's end. The TokenRequest API refuses lifetimes under 10 minutes: the
token of a shorter grant outlives it, and the grant's access ends when its ServiceAccount
is deleted (the token dies with it). Each grant records which path ended it (EndPath).

The store says `creating` before the API server is asked and keeps each object's UID as
soon as it is known, so a broker that dies mid-issue leaves a row the cleanup pass (a
leader job) finishes; a failed issue deletes what it made before it answers. Ending a
grant deletes its binding and ServiceAccount, by UID; a deletion the cluster does not
answer is retried with growing waits until it is done (`removing` in `access list`, and
the metric keyferry_cluster_grant_removals_pending).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from broker.audit import AuditAction, Principal
from broker.clusters import ClusterClient
from broker.clusters.config import NAME as DNS_LABEL
from broker.clusters.rbac import ClusterAccess, Deleted, GrantObjects, IssuedToken, account_name
from broker.errors import FailedPrecondition, InvalidRequest, KeyferryError, PermissionDenied
from broker.policy import Action, ClusterAccessResource, Operator
from broker.settings import AccessSettings
from broker.store import (
    EndPath,
    GrantRecord,
    GrantState,
    GrantStateConflict,
    KubeGrantRecord,
    KubeObjects,
)

from ..common.audit_trail import operator_principal, system_principal
from ..common.callers import Callers
from ..common.grant_terms import check_grant_ask, is_cluster_grant, kube_role, new_grant
from ..core import Core
from ..engine.revoker import Backoff
from .access_grants import ISSUABLE, AccessFlow

log = structlog.get_logger("keyferry.cluster_access")
CLEANUP_JOB = "broker.cluster-access"
CLAIM = timedelta(seconds=60)  # an issue's hold on its row; past it, the cleanup pass takes it


@dataclass(frozen=True)
class ClusterAsk:
    cluster: str
    namespace: str | None
    cluster_role: str


@dataclass(frozen=True)
class ClusterCredential:
    """What `access issue` writes into a kubeconfig."""

    grant: GrantRecord
    details: KubeGrantRecord
    server: str
    ca_pem: str
    token: str
    token_expires_at: datetime


def check_cluster_ask(
    cluster: str, namespace: str, all_namespaces: bool, cluster_role: str, allowed: tuple[str, ...]
) -> ClusterAsk:
    if not DNS_LABEL.fullmatch(cluster or ""):
        raise InvalidRequest(
            "cluster", "is required: a registered cluster's name (`keyferry clusters list`)"
        )
    if all_namespaces and namespace:
        raise InvalidRequest("namespace", "give a namespace or all_namespaces, not both")
    if not all_namespaces and not DNS_LABEL.fullmatch(namespace or ""):
        raise InvalidRequest(
            "namespace", "is required: the namespace to get access in (or --all-namespaces)"
        )
    if cluster_role not in allowed:
        raise InvalidRequest(
            "kube_role",
            f"{cluster_role!r} is not a ClusterRole the broker grants; ask for one of "
            f"{', '.join(allowed)} (the broker's access.cluster_roles)",
        )
    return ClusterAsk(cluster, None if all_namespaces else namespace, cluster_role)


class ClusterAccessFlow:
    def __init__(
        self,
        core: Core,
        *,
        access: AccessFlow,
        callers: Callers,
        settings: AccessSettings,
        backoff: Backoff | None = None,
    ) -> None:
        self._access = access
        self._gate = core.gate
        self._audit = core.audit
        self._grants = core.store.grants
        self._kube = core.store.kube_grants
        self._callers = callers
        self._settings = settings
        self._clock = core.clock
        self._backoff = backoff or Backoff()
        access.on_end(self)

    # -- request ---------------------------------------------------------------------------

    async def request(
        self,
        operator: Operator,
        *,
        cluster: str,
        namespace: str,
        all_namespaces: bool,
        cluster_role: str,
        duration: timedelta | None,
        reason: str,
        request_id: str,
    ) -> GrantRecord:
        target = check_cluster_ask(
            cluster, namespace, all_namespaces, cluster_role, self._settings.cluster_roles
        )
        role = kube_role(target.cluster, target.namespace, target.cluster_role)
        ask = check_grant_ask(role, duration, reason, self._settings.max_duration)
        self._client(target.cluster)  # a cluster the broker does not know is refused now
        grant = new_grant(ask, operator.name, self._clock(), self._settings.approval_wait)
        resource = ClusterAccessResource(
            cluster=target.cluster, namespace=target.namespace, cluster_role=target.cluster_role
        )
        action = (
            Action.REQUEST_CLUSTER_WIDE_ACCESS
            if target.namespace is None
            else Action.REQUEST_CLUSTER_ACCESS
        )
        await self._gate.require(
            operator,
            action,
            resource,
            lambda decision: self._audit.grant(
                operator_principal(operator),
                AuditAction.ACCESS_REQUEST,
                grant,
                request_id,
                decision=decision,
            ),
            f"no policy permits operator {operator.name!r} to request ClusterRole "
            f"{target.cluster_role!r} in {_where(target.namespace)} of cluster "
            f"{target.cluster!r} for {grant.duration_seconds}s (Cedar action "
            f"'{action.value}' on the ClusterAccess); ask for a Cedar permit"
            + (" naming that action" if target.namespace is None else " or a shorter duration"),
            context={"duration_seconds": grant.duration_seconds},
        )
        await self._kube.add(
            KubeGrantRecord(
                grant_id=grant.id,
                cluster=target.cluster,
                namespace=target.namespace,
                cluster_role=target.cluster_role,
                account_namespace=self._settings.cluster_namespace,
                account=account_name(grant.id),
                objects=KubeObjects.ABSENT,
                account_uid=None,
                binding_uid=None,
                token_expires_at=None,
                next_attempt_at=None,
                attempts=0,
                last_error=None,
                ended_path=None,
                removed_at=None,
                updated_at=grant.requested_at,
            )
        )
        stored = await self._grants.add(grant)
        log.info("cluster access requested", grant_id=stored.id, role=role, request_id=request_id)
        return stored

    # -- issue -----------------------------------------------------------------------------

    async def issue(self, operator: Operator, grant_id: str, request_id: str) -> ClusterCredential:
        """A token of the grant's ServiceAccount, ending when the grant does; the
        ServiceAccount and binding are made on the first call."""
        grant = await self._access.current(grant_id)
        who = operator_principal(operator)
        if operator.name != grant.requester:
            await self._audit.grant(
                who, AuditAction.ACCESS_ISSUE, grant, request_id, reason="NOT_REQUESTER"
            )
            raise PermissionDenied(
                f"grant {grant.id} is {grant.requester!r}'s; only its requester may use it"
            )
        if not is_cluster_grant(grant):
            raise FailedPrecondition(
                f"grant {grant.id} gives role {grant.role!r}'s credentials, not access to a "
                "cluster: IssueForGrant gives them"
            )
        if grant.state not in ISSUABLE:
            refused = f"GRANT_{grant.state.value.upper()}"
            await self._audit.grant(
                who, AuditAction.ACCESS_ISSUE, grant, request_id, reason=refused
            )
            raise GrantStateConflict(grant, "used to issue access")
        details = await self._kube.get(grant.id)
        cluster = ClusterAccess(self._client(details.cluster))
        objects = _objects(details)
        seconds = max(int((grant.expires_at - self._clock()).total_seconds()), 1)
        try:
            if details.objects == KubeObjects.PRESENT:
                token = await cluster.token(objects, seconds)
                # the latest token's end decides which path ends the access
                details = await self._kube.created(grant.id, token.expires_at, self._clock())
            else:
                details, token = await self._create(details, cluster, objects, seconds)
        except KeyferryError as error:
            await self._audit.grant(
                who, AuditAction.ACCESS_ISSUE, grant, request_id, reason=error.reason
            )
            raise
        try:
            grant = await self._grants.mark_issued(grant.id, self._clock())
        except GrantStateConflict as ended:
            # The grant ended while the cluster answered: what was made goes at once.
            await self._remove_now(ended.grant, who, request_id, again=True)
            raise
        await self._audit.grant(who, AuditAction.ACCESS_ISSUE, grant, request_id)
        server, ca = cluster.endpoint()
        log.info("cluster access issued", grant_id=grant.id, request_id=request_id)
        return ClusterCredential(grant, details, server, ca, token.token, token.expires_at)

    async def _create(
        self, details: KubeGrantRecord, cluster: ClusterAccess, objects: GrantObjects, seconds: int
    ) -> tuple[KubeGrantRecord, IssuedToken]:
        now = self._clock()
        claimed = await self._kube.begin_create(details.grant_id, now + CLAIM, now)
        if claimed is None:
            raise FailedPrecondition(
                f"grant {details.grant_id}'s objects in cluster {details.cluster!r} are being "
                f"{'removed' if details.objects == KubeObjects.REMOVING else 'made'} now; "
                "try again in a minute"
            )
        asked = False  # whether the API server was asked to make anything yet
        try:
            await cluster.require_cluster_role(details.cluster_role)
            asked = True
            account_uid = await cluster.create_account(objects)
            await self._kube.record_uids(details.grant_id, self._clock(), account_uid=account_uid)
            binding_uid = await cluster.create_binding(objects)
            await self._kube.record_uids(details.grant_id, self._clock(), binding_uid=binding_uid)
            token = await cluster.token(objects, seconds)
        except KeyferryError:
            if asked:
                await self._undo(details.grant_id)
            else:  # nothing was made: absent again at once
                await self._kube.removed(
                    details.grant_id, EndPath.ACCOUNT_DELETED, self._clock(), reopen=True
                )
            raise
        made = await self._kube.created(details.grant_id, token.expires_at, self._clock())
        return made, token

    async def _undo(self, grant_id: str) -> None:
        """Delete what a failed issue made, now; what the cluster does not let go of now
        stays `creating`, due at once, for the cleanup pass."""
        details = await self._kube.get(grant_id)
        who = system_principal(CLEANUP_JOB)
        await self._remove(details, who, uuid.uuid4().hex, reopen=True)

    # -- end -------------------------------------------------------------------------------

    async def grant_ended(self, grant: GrantRecord, who: Principal, request_id: str) -> None:
        if is_cluster_grant(grant):
            await self._remove_now(grant, who, request_id)

    async def _remove_now(
        self, grant: GrantRecord, who: Principal, request_id: str, *, again: bool = False
    ) -> None:
        details = await self._kube.to_remove(grant.id, self._clock(), again=again)
        if details.objects == KubeObjects.REMOVING:
            await self._remove(details, who, request_id, reopen=False)

    async def cluster_leaving(self, operator: Operator, cluster: str, request_id: str) -> int:
        """Deregistration: revoke the cluster's open grants and delete their objects now,
        while the broker still reaches the cluster; how many could not be deleted."""
        who = operator_principal(operator)
        left = 0
        for details in await self._kube.of_cluster(cluster):
            if details.objects == KubeObjects.REMOVED:
                continue
            grant = await self._grants.get(details.grant_id)
            if not grant.state.final:
                grant = await self._grants.end(
                    grant.id, GrantState.REVOKED, operator.name, self._clock()
                )
                await self._audit.grant(
                    who, AuditAction.ACCESS_REVOKE, grant, request_id, reason="CLUSTER_DEREGISTERED"
                )
            record = await self._kube.to_remove(grant.id, self._clock())
            if record.objects == KubeObjects.REMOVING and not await self._remove(
                record, who, request_id, reopen=False
            ):
                left += 1
        return left

    async def remove_due(self) -> int:
        """One pass of the cleanup job: grants whose binding was edited or deleted end;
        removals due, and issues that died, are done; how many objects' removals were done."""
        await self.end_edited()
        done = 0
        for details in await self._kube.due(self._clock()):
            reopen = False
            if details.objects == KubeObjects.CREATING:
                grant = await self._grants.get(details.grant_id)
                reopen = not grant.state.final
            who = system_principal(CLEANUP_JOB)
            if await self._remove(details, who, uuid.uuid4().hex, reopen=reopen):
                done += 1
        return done

    async def end_edited(self) -> int:
        """End (revoked by the broker) every open grant whose binding is no longer the one
        the broker made: deleted, replaced (another UID), or bound to another role or
        subject; its objects are then deleted like any ended grant's. How many ended."""
        ended = 0
        for details in await self._kube.present():
            if details.binding_uid is None:
                continue
            try:
                cluster = ClusterAccess(self._client(details.cluster))
                if await cluster.binding_intact(_objects(details), details.binding_uid):
                    continue
            except KeyferryError as error:
                log.warning(
                    "cluster grant not checked", grant_id=details.grant_id, error=error.message
                )
                continue
            grant = await self._grants.get(details.grant_id)
            if grant.state.final:
                continue
            who, request_id = system_principal(CLEANUP_JOB), uuid.uuid4().hex
            try:
                grant = await self._grants.end(
                    grant.id, GrantState.REVOKED, CLEANUP_JOB, self._clock()
                )
            except GrantStateConflict:
                continue  # ended otherwise meanwhile; its end removes the objects
            await self._audit.grant(
                who, AuditAction.ACCESS_REVOKE, grant, request_id, reason="CLUSTER_OBJECTS_EDITED"
            )
            log.warning("cluster grant's binding was edited; grant revoked", grant_id=grant.id)
            await self._remove_now(grant, who, request_id)
            ended += 1
        return ended

    async def pending_removals(self) -> int:
        return await self._kube.pending_removals()

    async def details(self, grant_ids: list[str]) -> dict[str, KubeGrantRecord]:
        return await self._kube.many(grant_ids)

    async def _remove(
        self, details: KubeGrantRecord, who: Principal, request_id: str, *, reopen: bool
    ) -> bool:
        """Delete the grant's binding, then its ServiceAccount (by UID); True when both are
        gone. A failure is recorded and retried after a growing wait."""
        now = self._clock()
        objects = _objects(details)
        grant = await self._grants.get(details.grant_id)
        try:
            cluster = ClusterAccess(self._client(details.cluster))
            binding = await cluster.delete_binding(objects, details.binding_uid)
            account = await cluster.delete_account(objects, details.account_uid)
        except KeyferryError as error:
            wait = self._backoff.after(details.attempts + 1)
            await self._kube.removal_failed(details.grant_id, error.message, now + wait, now)
            await self._audit.grant(
                who,
                AuditAction.ACCESS_CLUSTER_REMOVE_FAILED,
                grant,
                request_id,
                reason=error.reason,
            )
            log.warning(
                "cluster grant's objects not removed; will retry",
                grant_id=details.grant_id,
                error=error.message,
            )
            return False
        for what, result in (("binding", binding), ("service account", account)):
            if result == Deleted.NOT_OURS:
                log.warning(
                    f"a {what} of the grant's name is not the one keyferry made; left alone",
                    grant_id=details.grant_id,
                    cluster=details.cluster,
                )
        expired = details.token_expires_at is not None and details.token_expires_at <= now
        path = EndPath.TOKEN_EXPIRED if expired else EndPath.ACCOUNT_DELETED
        await self._kube.removed(details.grant_id, path, now, reopen=reopen)
        await self._audit.grant(
            who, AuditAction.ACCESS_CLUSTER_REMOVED, grant, request_id, reason=path.name
        )
        log.info("cluster grant's objects removed", grant_id=details.grant_id, path=path.value)
        return True

    def _client(self, cluster: str) -> ClusterClient:
        client = self._callers.client(cluster)
        if client is None:
            raise InvalidRequest(
                "cluster",
                f"{cluster!r} is not a cluster the broker knows; see `keyferry clusters list`",
            )
        return client


def _objects(details: KubeGrantRecord) -> GrantObjects:
    return GrantObjects(
        grant_id=details.grant_id,
        cluster_role=details.cluster_role,
        namespace=details.namespace,
        account_namespace=details.account_namespace,
        account=details.account,
    )


def _where(namespace: str | None) -> str:
    return "all namespaces" if namespace is None else f"namespace {namespace!r}"
