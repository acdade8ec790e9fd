"""Everything the broker's servicers need, opened from settings in order and closed in reverse.

Start-up refuses to continue on the first thing that cannot work: a policy that does not
validate (Cedar's message), a store that cannot be migrated, a roles file with problems,
a cluster whose keys cannot be fetched, an audit log whose tail is damaged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import structlog

from broker.audit import AuditLog, Fingerprinter, JsonLinesSink, StoreCheckpointSink
from broker.backends import Backends, VaultClient
from broker.backends.transit import TransitSigner
from broker.clusters import ClusterClient
from broker.models import load_roles
from broker.policy import PolicyEngine
from broker.settings import BrokerSettings
from broker.store import Store, StoreRunner
from broker.store.clock import Clock, utcnow

from .access import AccessFlow
from .auditing import AuditTrail
from .callers import Callers
from .catalog import RoleCatalog
from .cluster_admin import KEYS_REFRESH, ClusterAdmin
from .events import EventHub
from .issuing import IssueFlow, IssueLimits
from .limits import IssueRates
from .loops import Periodic
from .pod_leases import SWEEP_INTERVAL, PodLeases
from .reconciling import Reconciler
from .releasing import ReleaseFlow
from .renewing import Renewer, RenewFlow
from .revocation import RevocationFlow
from .revoking import Revoker
from .role_admin import RoleAdmin
from .root_rotation import RootRotationFlow
from .rotating import RotationFlow
from .sealing import CredentialSealer
from .watching import WatchFlow

log = structlog.get_logger("keyferry.runtime")


@dataclass
class LeaseFlows:
    """What keeps issued leases alive and replaces them: the event hub of Watch streams,
    the flows of Watch, Renew and RotateLeases, and the periodic jobs."""

    hub: EventHub
    revoker: Revoker
    renewer: Renewer
    watch: WatchFlow
    renew: RenewFlow
    rotation: RotationFlow
    revocation: RevocationFlow
    root: RootRotationFlow
    reconciler: Reconciler
    jobs: list[Periodic]


@dataclass
class BrokerRuntime:
    settings: BrokerSettings
    store: Store
    runner: StoreRunner
    vault: VaultClient
    catalog: RoleCatalog
    roles: RoleAdmin
    audit: AuditTrail
    issue: IssueFlow
    release: ReleaseFlow
    flows: LeaseFlows
    clusters: ClusterAdmin
    pods: PodLeases
    access: AccessFlow
    _stack: AsyncExitStack

    @classmethod
    async def open(cls, settings: BrokerSettings, clock: Clock = utcnow) -> BrokerRuntime:
        """Open everything; `clock` is the broker's notion of now for token ends, renewal
        windows and grace periods (tests pass a controlled one)."""
        stack = AsyncExitStack()
        try:
            return await cls._open(settings, stack, clock)
        except BaseException:
            await stack.aclose()
            raise

    @classmethod
    async def _open(
        cls, settings: BrokerSettings, stack: AsyncExitStack, clock: Clock
    ) -> BrokerRuntime:
        policy = PolicyEngine.from_files(settings.policies)
        store = await asyncio.to_thread(Store.open, settings.store)
        _on_close(stack, store.close)
        runner = StoreRunner(settings.store.pool_size)
        _on_close(stack, runner.close)
        vault = VaultClient(settings.vault)
        _on_close(stack, vault.close)
        catalog = RoleCatalog(store.roles, runner)
        if settings.roles is not None:
            applied = await catalog.apply(load_roles(settings.roles))
            log.info("roles file applied", path=str(settings.roles), roles=len(applied))
        clients = {c.name: ClusterClient(c) for c in settings.clusters}
        callers = await _connect(clients)
        _on_close(stack, callers.close)
        sink = JsonLinesSink(settings.audit.log)
        _on_close(stack, sink.close)
        audit_log = await asyncio.to_thread(AuditLog, sink, chain=settings.audit.chain)
        audit = AuditTrail(audit_log, Fingerprinter(settings.audit.hmac_key))
        _on_close(stack, audit.close)
        backends = Backends(vault)
        sealer = CredentialSealer(settings.sealing.key_bytes())
        limits = IssueLimits(settings.limits.per_pod, settings.limits.per_cluster)
        issue = IssueFlow(
            callers=callers,
            catalog=catalog,
            policy=policy,
            audit=audit,
            store=store,
            runner=runner,
            backends=backends,
            sealer=sealer,
            limits=limits,
            rates=IssueRates(settings.limits, clock),
        )
        release = ReleaseFlow(
            callers=callers,
            policy=policy,
            audit=audit,
            store=store,
            runner=runner,
            backends=backends,
        )
        hub = EventHub()
        revoker = Revoker(
            store=store, runner=runner, backends=backends, audit=audit, hub=hub, clock=clock
        )
        renewer = Renewer(
            store=store,
            runner=runner,
            backends=backends,
            audit=audit,
            hub=hub,
            settings=settings.renewal,
            clock=clock,
        )
        flows = LeaseFlows(
            hub=hub,
            revoker=revoker,
            renewer=renewer,
            watch=WatchFlow(
                callers=callers,
                policy=policy,
                audit=audit,
                store=store,
                runner=runner,
                sealer=sealer,
                hub=hub,
                revoker=revoker,
                clock=clock,
            ),
            renew=RenewFlow(
                callers=callers,
                policy=policy,
                audit=audit,
                store=store,
                runner=runner,
                renewer=renewer,
            ),
            rotation=RotationFlow(
                catalog=catalog,
                policy=policy,
                audit=audit,
                store=store,
                runner=runner,
                backends=backends,
                sealer=sealer,
                hub=hub,
                grace=settings.rotation.grace,
                concurrency=settings.rotation.concurrency,
                resume_after=settings.rotation.resume_after,
                clock=clock,
            ),
            revocation=RevocationFlow(
                policy=policy,
                audit=audit,
                store=store,
                runner=runner,
                revoker=revoker,
                concurrency=settings.rotation.concurrency,
                clock=clock,
            ),
            root=RootRotationFlow(policy=policy, audit=audit, vault=vault, clock=clock),
            reconciler=Reconciler(
                vault=vault,
                store=store,
                runner=runner,
                audit=audit,
                hub=hub,
                clock=clock,
                orphan_age=settings.rotation.orphan_age,
            ),
            jobs=[
                Periodic("renew", settings.renewal.interval, renewer.renew_due),
                Periodic("revoke", settings.rotation.revoke_interval, revoker.revoke_due),
            ],
        )
        roles = RoleAdmin(catalog, policy, audit)
        pods = PodLeases(callers=callers, store=store, runner=runner, revoker=revoker)
        clusters = ClusterAdmin(
            configured=settings.clusters,
            callers=callers,
            store=store,
            runner=runner,
            policy=policy,
            audit=audit,
            sealer=sealer,
            revoker=revoker,
            pods=pods,
            clock=clock,
        )
        await clusters.load()
        flows.jobs.append(Periodic("jwks", KEYS_REFRESH, clusters.refresh_keys))
        flows.jobs.append(Periodic("pod-sweep", SWEEP_INTERVAL, pods.sweep))
        # The first pass runs as the job starts, so at broker start; then periodically.
        reconcile = settings.rotation.reconcile_interval
        flows.jobs.append(Periodic("reconcile", reconcile, flows.reconciler.run_once))
        flows.jobs.append(
            Periodic("rotation-queue", settings.rotation.revoke_interval, flows.rotation.resume)
        )
        access = AccessFlow(
            catalog=catalog,
            policy=policy,
            audit=audit,
            store=store,
            runner=runner,
            backends=backends,
            sealer=sealer,
            revoker=revoker,
            settings=settings.access,
            clock=clock,
        )
        flows.jobs.append(
            Periodic("access-expiry", settings.access.expiry_interval, access.expire_due)
        )
        return cls(
            settings,
            store,
            runner,
            vault,
            catalog,
            roles,
            audit,
            issue,
            release,
            flows,
            clusters,
            pods,
            access,
            stack,
        )

    def start_jobs(self) -> None:
        """Start the periodic jobs and the pod watches (on the running event loop)."""
        for job in self.flows.jobs:
            job.start()
        self.pods.start()

    async def stop_jobs(self) -> None:
        await self.pods.stop()
        for job in self.flows.jobs:
            await job.stop()

    async def checkpoint(self) -> bool:
        """Sign the audit chain's head with Vault transit and keep it in the store, when
        transit is configured; False when it is not."""
        audit = self.settings.audit
        if audit.transit_mount is None or audit.transit_key is None:
            return False
        mount, key = audit.transit_mount, audit.transit_key
        sink = StoreCheckpointSink(self.store.checkpoints)

        def sign(client: Any) -> object:
            return self.audit.log.checkpoint(TransitSigner(client, key, mount), sink)

        await self.vault.call(sign)
        return True

    async def close(self) -> None:
        await self.stop_jobs()
        await self._stack.aclose()


async def _connect(clients: dict[str, ClusterClient]) -> Callers:
    try:
        return await Callers.connect(clients)
    except BaseException:
        for client in clients.values():
            client.close()
        raise


def _on_close(stack: AsyncExitStack, close: Callable[[], object]) -> None:
    stack.callback(close)
