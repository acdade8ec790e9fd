"""ClustersService's flows for an operator: Cedar decides, the audit trail records, then the
registry changes, and the verifier and pod checks follow at once (no restart).

Every Clusters method is decided as the action `register` on the `Cluster` resource: who
may add or remove a member cluster may also read the registry (it names API servers and
issuers, which is what an attacker would want to map). List returns only the clusters the
operator may see (one decision, audited, per cluster). The audit records name what was
asked (`clusters.register`, `clusters.read`, `clusters.list`, `clusters.deregister`), the
operator and the cluster.

A registered cluster's credential is sealed in the store with the broker's sealing key.
Its JWKS is pinned in the store; `refresh_keys` (a periodic job) fetches it anew, and a
token with an unknown key id fetches it too, at most once per tokens.jwks_min_interval
(broker.service.common.callers). Clusters from
the config file stay as they are: listed, never deregistered here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
from pydantic import SecretStr

from broker.audit import AuditAction
from broker.clusters import ClusterClient, ClusterConfig, ClusterConnection, ClusterUnavailable
from broker.errors import FailedPrecondition, InvalidRequest, KeyferryError
from broker.models import Credential
from broker.policy import Action, ClusterRef, Operator
from broker.store import ClusterExists, ClusterRecord, Selector

from ..common.audit_trail import operator_principal
from ..common.callers import Callers
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


@dataclass(frozen=True)
class Deregistered:
    revoked: int
    queued: int


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
    ) -> None:
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
        start does not stop the broker; its pinned keys still verify tokens)."""
        records = await self._clusters.list()
        for record in records:
            if record.name in self._configured:
                log.warning("registered cluster shadowed by the config file", cluster=record.name)
                continue
            self._callers.join(ClusterClient(self._connection(record)), record.jwks)
        return len(records)

    async def register(
        self, operator: Operator, connection: ClusterConnection, request_id: str
    ) -> ClusterView:
        name = connection.name
        await self._require(operator, name, "register", request_id)
        try:
            client, jwks, record = await self._add(connection)
        except KeyferryError as error:  # a refused cluster is on the audit trail too
            await self._audit.operator_refusal(
                operator, AuditAction.CLUSTERS_REGISTER, error, request_id, cluster=name
            )
            raise
        self._callers.join(client, jwks)
        self._pods.watch(client)
        log.info("cluster registered", cluster=name, operator=operator.name, request_id=request_id)
        return await self._view_record(record)

    async def _add(
        self, connection: ClusterConnection
    ) -> tuple[ClusterClient, dict[str, Any], ClusterRecord]:
        """Check the cluster and pin it in the store; its client, JWKS and record."""
        name = connection.name
        if name in self._configured or self._callers.client(name) is not None:
            raise ClusterExists(f"a cluster named {name!r} is already registered")
        client = ClusterClient(connection)
        try:
            jwks = await check_cluster(client)
            self._refuse_known_keys(name, jwks)
            secret = {"bearer_token": connection.bearer_token}
            if connection.cert_pem is not None and connection.key_pem is not None:
                secret = {"cert_pem": SecretStr(connection.cert_pem), "key_pem": connection.key_pem}
            sealed = self._sealer.seal(_sealing_id(name), Credential(values=_present(secret)))
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
        not be revoked unless `force` (they stay queued and are retried)."""
        await self._require(operator, name, "deregister", request_id)
        if name in self._configured:
            raise InvalidRequest(
                "name", f"cluster {name!r} comes from the broker's config file; remove it there"
            )
        await self._clusters.get(name)  # ClusterNotFound
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
        for record in await self._clusters.list():
            client = self._callers.client(record.name)
            if client is None or record.name in self._configured:
                continue
            try:
                jwks = await client.jwks()
            except ClusterUnavailable as error:
                log.warning("JWKS refresh failed", cluster=record.name, error=error.message)
                continue
            self._callers.join(client, jwks)
            await self._clusters.record_jwks(record.name, jwks)
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
            return await self._view_record(await self._clusters.get(name))
        keys = self._callers.keys().get(name)
        return ClusterView(
            name=name,
            server="",
            issuer=config.issuer,
            registered=False,
            key_ids=_key_ids(dict(keys.jwks)) if keys else (),
            jwks_fetched_at=None,
            last_contact=None,
            registered_at=None,
            active_leases=await self._leases.count_live(cluster=name),
        )

    async def _view_record(self, record: ClusterRecord) -> ClusterView:
        return ClusterView(
            name=record.name,
            server=record.server,
            issuer=record.issuer,
            registered=True,
            key_ids=_key_ids(record.jwks),
            jwks_fetched_at=record.jwks_fetched_at,
            last_contact=record.last_contact,
            registered_at=record.registered_at,
            active_leases=await self._leases.count_live(cluster=record.name),
        )

    def _connection(self, record: ClusterRecord) -> ClusterConnection:
        secret = self._sealer.unseal(_sealing_id(record.name), record.sealed_credential).values
        return ClusterConnection(
            name=record.name,
            issuer=record.issuer,
            server=record.server,
            ca_pem=record.ca_pem,
            bearer_token=secret.get("bearer_token"),
            cert_pem=secret["cert_pem"].get_secret_value() if "cert_pem" in secret else None,
            key_pem=secret.get("key_pem"),
        )

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


def _present(values: dict[str, SecretStr | None]) -> dict[str, SecretStr]:
    return {k: v for k, v in values.items() if v is not None}


def _key_ids(jwks: dict[str, object]) -> tuple[str, ...]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return ()
    return tuple(str(k["kid"]) for k in keys if isinstance(k, dict) and "kid" in k)
