"""ClustersService's flows for an operator: Cedar decides, the audit trail records, then the
registry changes, and the verifier and pod checks follow at once (no restart).

Every Clusters method is decided as the action `register` on the `Cluster` resource: who
may add or remove a member cluster may also read the registry (it names API servers and
issuers, which is what an attacker would want to map). List returns only the clusters the
operator may see (one decision, audited, per cluster). The audit records name what was
asked (`clusters.register`, `clusters.read`, `clusters.list`, `clusters.deregister`), the
operator and the cluster.

A registered cluster's credential is sealed in the store with the broker's sealing key.
With `cluster_registration.approval: required` (the default) a registration or a
deregistration by one operator is a request: the cluster is checked (registration) and an
access grant `cluster:<kind>:<name>` is stored with what to do (cluster_requests); another
operator's `keyferry access approve` carries it out (grant_approved), the requester never
can (SelfApproval). With `single` one operator's call does it at once (test beds, demos).

Its JWKS is pinned in the store; `refresh_keys` (a periodic job) fetches it anew, and a
token with an unknown key id fetches it too, at most once per tokens.jwks_min_interval
(broker.service.common.callers). Clusters from
the config file stay as they are: listed, never deregistered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from pydantic import SecretStr

from broker.audit import AuditAction
from broker.clusters import (
    ClusterClient,
    ClusterConfig,
    ClusterConnection,
    ClusterHealth,
    ClusterUnavailable,
)
from broker.errors import FailedPrecondition, InvalidRequest, KeyferryError
from broker.models import Credential
from broker.policy import Action, ClusterRef, Operator
from broker.store import (
    ClusterExists,
    ClusterNotFound,
    ClusterRecord,
    ClusterRequestRecord,
    GrantRecord,
    RowTampered,
    Selector,
)

from ..common.audit_trail import operator_principal
from ..common.callers import Callers
from ..common.grant_terms import cluster_change_grant, cluster_change_of
from ..common.sealing import CredentialSealer
from ..core import Core
from ..jobs.ended_pods import PodLeases
from .cluster_checks import check_cluster, key_fingerprints

log = structlog.get_logger("keyferry.clusters")
ACTION = Action.REGISTER
DEREGISTERED = "CLUSTER_DEREGISTERED"
KEYS_REFRESH = timedelta(minutes=5)  # how often registered clusters' JWKS are fetched anew


class LeasesNotRevoked(FailedPrecondition):
    """Deregistration stopped: some of the cluster's leases could not be revoked now."""

    reason = "LEASES_NOT_REVOKED"


@dataclass(frozen=True)
class ClusterView:
    """A cluster as Get and List show it: where it is, where it came from, its health."""

    name: str
    server: str
    issuer: str
    registered: bool
    key_ids: tuple[str, ...]
    jwks_fetched_at: datetime | None
    last_contact: datetime | None
    registered_at: datetime | None
    active_leases: int
    # contact, JWKS fetch and the pod watch's state, since this broker started
    health: ClusterHealth = field(default_factory=ClusterHealth)


@dataclass(frozen=True)
class Registration:
    """The cluster as registered, or as checked while `pending_grant_id` awaits approval."""

    view: ClusterView
    pending_grant_id: str | None = None


@dataclass(frozen=True)
class Deregistered:
    revoked: int
    queued: int
    pending_grant_id: str | None = None


Leaving = Callable[[Operator, str, str], Awaitable[int]]
"""What else ends when a cluster is deregistered: (operator, cluster, request id) → how many
things were not ended now (cluster_access.py's grants)."""


class ClusterAdmin:
    def __init__(
        self,
        core: Core,
        *,
        configured: Sequence[ClusterConfig],
        callers: Callers,
        sealer: CredentialSealer,
        pods: PodLeases,
        second_operator: bool = True,
        approval_wait: timedelta = timedelta(hours=1),
    ) -> None:
        self._second_operator = second_operator
        self._approval_wait = approval_wait
        self._grants = core.store.grants
        self._requests = core.store.cluster_requests
        self._clock = core.clock
        self._configured = {c.name: c for c in configured}
        self._callers = callers
        self._clusters = core.store.clusters
        self._leases = core.store.leases
        self._gate = core.gate
        self._audit = core.audit
        self._sealer = sealer
        self._engine = core.engine
        self._pods = pods
        self._leaving: list[Leaving] = []

    def on_deregister(self, leaving: Leaving) -> None:
        """Call `leaving` before a cluster is removed (while the broker still reaches it);
        what it could not end now counts as queued, as leases do."""
        self._leaving.append(leaving)

    async def load(self) -> int:
        """Join every registered cluster with its pinned JWKS (a cluster that is down at
        start does not stop the broker; its pinned keys still verify tokens). A row that
        fails its integrity check is not joined, and audited: the broker starts, and an
        operator deregisters it and registers it again."""
        records, refused = await self._clusters.list_intact()
        for error in refused:  # not joined: its tokens are refused until it is registered again
            await self._audit.row_refused(error)
        for record in records:
            if record.name in self._configured:
                log.warning("registered cluster shadowed by the config file", cluster=record.name)
                continue
            client = ClusterClient(self._connection(record), clock=self._clock)
            self._callers.join(client, record.jwks)
        return len(records)

    def is_joined(self, name: str) -> bool:
        """Whether the broker verifies tokens of this cluster now."""
        return self._callers.client(name) is not None

    async def register(
        self, operator: Operator, connection: ClusterConnection, request_id: str
    ) -> Registration:
        """Register the cluster now, or (a second operator required) check it and store
        the request another operator approves."""
        name = connection.name
        await self._require(operator, name, "register", request_id)
        try:
            if self._second_operator:
                return await self._request_registration(operator, connection, request_id)
            client, jwks, record = await self._add(connection)
        except KeyferryError as error:  # a refused cluster is on the audit trail too
            await self._audit.operator_refusal(
                operator, AuditAction.CLUSTERS_REGISTER, error, request_id, cluster=name
            )
            raise
        self._join(client, jwks)
        log.info("cluster registered", cluster=name, operator=operator.name, request_id=request_id)
        return Registration(await self._view_record(record))

    async def _request_registration(
        self, operator: Operator, connection: ClusterConnection, request_id: str
    ) -> Registration:
        name = connection.name
        self._refuse_taken(name)
        client = ClusterClient(connection)
        try:
            jwks = await check_cluster(client)
        finally:
            client.close()
        self._refuse_known_keys(name, jwks)
        reason = (
            f"register cluster {name}: API server {connection.server}, issuer "
            f"{connection.issuer}, signing keys {', '.join(_key_ids(jwks)) or '(no kid)'}"
        )
        grant = self._change_grant("register", name, reason, operator)
        sealed = self._sealer.seal(_request_sealing_id(grant.id), _credential(connection))
        await self._store_request(operator, grant, connection, sealed, request_id)
        view = ClusterView(
            name=name,
            server=connection.server,
            issuer=connection.issuer,
            registered=False,
            key_ids=_key_ids(jwks),
            jwks_fetched_at=None,
            last_contact=None,
            registered_at=None,
            active_leases=0,
        )
        return Registration(view, grant.id)

    def _change_grant(self, kind: str, name: str, reason: str, operator: Operator) -> GrantRecord:
        """The pending grant a second operator approves for `kind` of cluster `name`."""
        return cluster_change_grant(
            kind,
            name,
            reason,
            requester=operator.name,
            requester_identity=operator.person,
            now=self._clock(),
            wait=self._approval_wait,
        )

    async def _store_request(
        self,
        operator: Operator,
        grant: GrantRecord,
        connection: ClusterConnection | None,
        sealed: bytes | None,
        request_id: str,
        *,
        name: str | None = None,
        force: bool = False,
    ) -> None:
        change = cluster_change_of(grant)
        assert change is not None  # noqa: S101 (built by cluster_change_grant)
        await self._requests.add(
            ClusterRequestRecord(
                grant_id=grant.id,
                kind=change[0],
                name=change[1],
                server=connection.server if connection else "",
                ca_pem=connection.ca_pem if connection else "",
                issuer=connection.issuer if connection else "",
                sealed_credential=sealed,
                force=force,
                created_at=grant.requested_at,
            )
        )
        stored = await self._grants.add(grant)
        await self._audit.grant(
            operator_principal(operator), AuditAction.ACCESS_REQUEST, stored, request_id
        )
        log.info(
            "cluster change awaits a second operator",
            change=grant.role,
            grant_id=grant.id,
            operator=operator.name,
            request_id=request_id,
        )

    async def grant_approved(self, grant: GrantRecord, approver: Operator, request_id: str) -> None:
        """Carry out the registry change an approved grant stands for (AccessFlow calls
        this for every approval; other grants are not this flow's)."""
        change = cluster_change_of(grant)
        if change is None:
            return
        kind, name = change
        try:
            request = await self._requests.get(grant.id)
        except RowTampered as error:
            await self._audit.row_refused(error)
            raise
        if kind == "deregister":
            await self._deregister_now(approver, name, request.force, request_id)
            await self._audit.cluster_change(
                approver, AuditAction.CLUSTERS_DEREGISTER, name, grant.id, request_id
            )
            return
        assert request.sealed_credential is not None  # noqa: S101 (a registration has one)
        secret = self._sealer.unseal(_request_sealing_id(grant.id), request.sealed_credential)
        connection = _connection_of(
            name, request.issuer, request.server, request.ca_pem, secret.values
        )
        try:
            client, jwks, _ = await self._add(connection)
        except KeyferryError as error:
            await self._audit.operator_refusal(
                approver, AuditAction.CLUSTERS_REGISTER, error, request_id, cluster=name
            )
            raise
        self._join(client, jwks)
        await self._audit.cluster_change(
            approver, AuditAction.CLUSTERS_REGISTER, name, grant.id, request_id
        )
        log.info(
            "cluster registered on approval",
            cluster=name,
            requester=grant.requester,
            approver=approver.name,
            request_id=request_id,
        )

    def _join(self, client: ClusterClient, jwks: dict[str, Any]) -> None:
        self._callers.join(client, jwks)
        self._pods.watch(client)

    async def _add(
        self, connection: ClusterConnection
    ) -> tuple[ClusterClient, dict[str, Any], ClusterRecord]:
        """Check the cluster and pin it in the store; its client, JWKS and record."""
        name = connection.name
        self._refuse_taken(name)
        client = ClusterClient(connection, clock=self._clock)
        try:
            jwks = await check_cluster(client)
            self._refuse_known_keys(name, jwks)
            sealed = self._sealer.seal(_sealing_id(name), _credential(connection))
            record = await self._clusters.add(
                name=name,
                server=connection.server,
                ca_pem=connection.ca_pem,
                issuer=connection.issuer,
                sealed_credential=sealed,
                jwks=jwks,
            )
        except BaseException:
            client.close()
            raise
        return client, jwks, record

    async def get(self, operator: Operator, name: str, request_id: str) -> ClusterView:
        view = await self._view(name)
        await self._require(operator, name, "read", request_id)
        return view

    async def list_all(self, operator: Operator, request_id: str) -> list[ClusterView]:
        visible = []
        for name in sorted({*self._configured, *self._callers.keys()}):
            decision = await self._gate.decide(
                operator,
                ACTION,
                ClusterRef(name=name),
                partial(
                    self._audit.operator_decision,
                    operator,
                    AuditAction.CLUSTERS_LIST,
                    request_id=request_id,
                    cluster=name,
                ),
            )
            if decision.allowed:
                visible.append(await self._view(name))
        return visible

    async def deregister(
        self, operator: Operator, name: str, force: bool, request_id: str
    ) -> Deregistered:
        """Revoke every live lease of the cluster, then remove it; refuse when some could
        not be revoked unless `force` (they stay queued and are retried). A second operator
        required: store the request another operator approves, and change nothing yet."""
        await self._require(operator, name, "deregister", request_id)
        if name in self._configured:
            raise InvalidRequest(
                "name", f"cluster {name!r} comes from the broker's config file; remove it there"
            )
        if not await self._clusters.exists(name):  # intact or not: a tampered row goes too
            raise ClusterNotFound(name)
        if not self._second_operator:
            return await self._deregister_now(operator, name, force, request_id)
        reason = f"deregister cluster {name}" + (" (force)" if force else "")
        grant = self._change_grant("deregister", name, reason, operator)
        await self._store_request(operator, grant, None, None, request_id, force=force)
        return Deregistered(0, 0, grant.id)

    async def _deregister_now(
        self, operator: Operator, name: str, force: bool, request_id: str
    ) -> Deregistered:
        if not await self._clusters.exists(name):
            raise ClusterNotFound(name)
        revoked, queued = await self._revoke_all(operator, name, request_id)
        for leaving in self._leaving:
            queued += await leaving(operator, name, request_id)
        if queued and not force:
            raise LeasesNotRevoked(
                f"{queued} lease(s) (or cluster grants' objects) of cluster {name!r} could "
                "not be revoked now and are "
                "queued for retry; the cluster stays registered. Retry later, or pass "
                "--force to deregister it anyway"
            )
        await self._clusters.delete(name)
        await self._pods.unwatch(name)
        self._callers.leave(name)
        log.info("cluster deregistered", cluster=name, revoked=revoked, queued=queued)
        return Deregistered(revoked, queued)

    async def refresh_keys(self) -> int:
        """Fetch every registered cluster's JWKS anew and pin it; how many answered."""
        done = 0
        records, refused = await self._clusters.list_intact()
        for error in refused:
            await self._audit.row_refused(error)
        for record in records:
            client = self._callers.client(record.name)
            if client is None or record.name in self._configured:
                continue
            try:
                jwks = await client.jwks()
            except ClusterUnavailable as error:
                log.warning("JWKS refresh failed", cluster=record.name, error=error.message)
                continue
            try:
                await self._clusters.record_jwks(record.name, jwks)
            except RowTampered as error:  # edited since it was listed: not joined anew
                await self._audit.row_refused(error)
                continue
            self._callers.join(client, jwks)
            done += 1
        return done

    async def _revoke_all(self, operator: Operator, name: str, request_id: str) -> tuple[int, int]:
        who = operator_principal(operator)
        leases = await self._leases.list_by_selector(Selector(cluster=name))
        revoked = queued = 0
        for lease in leases:
            try:
                await self._engine.end(lease, who, DEREGISTERED, request_id)
            except KeyferryError as error:
                log.warning("lease not revoked; queued", lease_id=lease.id, error=error.message)
                queued += 1
            else:
                revoked += 1
        return revoked, queued

    def _refuse_taken(self, name: str) -> None:
        if name in self._configured or self._callers.client(name) is not None:
            raise ClusterExists(f"a cluster named {name!r} is already registered")

    def _refuse_known_keys(self, name: str, jwks: dict[str, object]) -> None:
        new = key_fingerprints(jwks)
        for other, keys in self._callers.keys().items():
            if other != name and new & key_fingerprints(dict(keys.jwks)):
                raise ClusterExists(
                    f"a service-account key of cluster {name!r} is already registered for "
                    f"cluster {other!r}: is it the same cluster under another name?"
                )

    async def _view(self, name: str) -> ClusterView:
        config = self._configured.get(name)
        if config is None:
            try:
                record = await self._clusters.get(name)
            except RowTampered as error:
                await self._audit.row_refused(error)
                raise
            return await self._view_record(record)
        keys = self._callers.keys().get(name)
        client = self._callers.client(name)
        health = client.health() if client is not None else ClusterHealth()
        return ClusterView(
            name=name,
            server=client.server if client is not None else "",
            issuer=config.issuer,
            registered=False,
            key_ids=_key_ids(dict(keys.jwks)) if keys else (),
            jwks_fetched_at=health.jwks_fetched_at,
            last_contact=health.last_contact,
            registered_at=None,
            active_leases=await self._leases.count_live(cluster=name),
            health=health,
        )

    async def _view_record(self, record: ClusterRecord) -> ClusterView:
        """The stored record, with this broker's later contact and fetch when it has one."""
        client = self._callers.client(record.name)
        health = client.health() if client is not None else ClusterHealth()
        return ClusterView(
            name=record.name,
            server=record.server,
            issuer=record.issuer,
            registered=True,
            key_ids=_key_ids(record.jwks),
            jwks_fetched_at=_later(record.jwks_fetched_at, health.jwks_fetched_at),
            last_contact=_later(record.last_contact, health.last_contact),
            registered_at=record.registered_at,
            active_leases=await self._leases.count_live(cluster=record.name),
            health=health,
        )

    def _connection(self, record: ClusterRecord) -> ClusterConnection:
        secret = self._sealer.unseal(_sealing_id(record.name), record.sealed_credential).values
        return _connection_of(record.name, record.issuer, record.server, record.ca_pem, secret)

    async def _require(self, operator: Operator, name: str, verb: str, request_id: str) -> None:
        await self._gate.require(
            operator,
            ACTION,
            ClusterRef(name=name),
            lambda decision: self._audit.operator_decision(
                operator, AuditAction(f"clusters.{verb}"), decision, request_id, cluster=name
            ),
            f"no policy permits operator {operator.name!r} to {verb} cluster {name!r} "
            f"(Cedar action {ACTION.value!r} on Cluster); ask for a Cedar permit",
        )


def _sealing_id(name: str) -> str:
    return f"cluster:{name}"


def _request_sealing_id(grant_id: str) -> str:
    return f"cluster-request:{grant_id}"


def _credential(connection: ClusterConnection) -> Credential:
    """How the broker authenticates to the cluster, as the credential it seals."""
    secret = {"bearer_token": connection.bearer_token}
    if connection.cert_pem is not None and connection.key_pem is not None:
        secret = {"cert_pem": SecretStr(connection.cert_pem), "key_pem": connection.key_pem}
    return Credential(values=_present(secret))


def _connection_of(
    name: str, issuer: str, server: str, ca_pem: str, secret: dict[str, SecretStr]
) -> ClusterConnection:
    return ClusterConnection(
        name=name,
        issuer=issuer,
        server=server,
        ca_pem=ca_pem,
        bearer_token=secret.get("bearer_token"),
        cert_pem=secret["cert_pem"].get_secret_value() if "cert_pem" in secret else None,
        key_pem=secret.get("key_pem"),
    )


def _present(values: dict[str, SecretStr | None]) -> dict[str, SecretStr]:
    return {k: v for k, v in values.items() if v is not None}


def _later(stored: datetime | None, seen: datetime | None) -> datetime | None:
    return max((t for t in (stored, seen) if t is not None), default=None)


def _key_ids(jwks: dict[str, object]) -> tuple[str, ...]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return ()
    return tuple(str(k["kid"]) for k in keys if isinstance(k, dict) and "kid" in k)
