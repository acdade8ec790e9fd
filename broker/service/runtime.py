"""Everything the broker's servicers need, opened from settings in order and closed in reverse.

Start-up refuses to continue on the first thing that cannot work: a policy that does not
validate (Cedar's message), a store that cannot be migrated, a roles file with problems,
a cluster whose keys cannot be fetched, an audit log whose tail is damaged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import structlog

from broker.audit import (
    AuditChain,
    AuditLog,
    FileRecords,
    Fingerprinter,
    JsonLinesSink,
    RecordSource,
    StoreChainLog,
    StoreCheckpointSink,
    StoreRecords,
)
from broker.backends import Backends, VaultClient
from broker.backends.transit import TransitSigner
from broker.clock import Clock, utcnow
from broker.clusters import ClusterClient
from broker.identity import KeyRefreshPolicy
from broker.models import load_roles
from broker.policy import PolicyEngine
from broker.settings import BrokerSettings, TokensSettings
from broker.store import AsyncStore, KeyRing, RowSigner, Store, StoreRunner

from .admin.access_grants import AccessFlow
from .admin.audit_reading import AuditReading, Transit
from .admin.cluster_access import ClusterAccessFlow
from .admin.clusters import ClusterAdmin
from .admin.lease_listing import LeaseListing
from .admin.rbac_sync import RbacSync
from .admin.revoke_selected import RevocationFlow
from .admin.roles import RoleAdmin
from .admin.root_credential import RootRotationFlow
from .admin.rotation import RotationFlow
from .admin.who_can import WhoCanFlow
from .common.audit_trail import AuditTrail
from .common.callers import Callers, VerifyLimits
from .common.gate import PolicyGate
from .common.role_catalog import RoleCatalog
from .common.sealing import CredentialSealer, check_ring
from .core import Core
from .engine.lease_engine import LeaseEngine
from .engine.revoker import CLAIM_MARGIN, Backoff, Revoker
from .events.hub import EventHub
from .events.relay import EventRelay
from .events.signed import EventSigner
from .jobs.ended_pods import PodLeases
from .jobs.leadership import leadership_for
from .jobs.reconcile import Reconciler
from .jobs.renewal import Renewer
from .jobs.rotation_schedule import ScheduledRotation
from .jobs.scheduler import JobScheduler, Periodic
from .workload.issue import IssueFlow, IssueLimits
from .workload.limits import IssueRates, LeaseCallRates, WatchStreamCaps
from .workload.release import ReleaseFlow
from .workload.renew import RenewFlow
from .workload.watch import WatchFlow

log = structlog.get_logger("keyferry.runtime")


@dataclass
class LeaseFlows:
    """What keeps issued leases alive and replaces them: the event hub of Watch streams
    (and its relay to the other replicas), the lease engine and its Revoker, the flows of
    Watch, Renew and RotateLeases, and the scheduler of the periodic jobs."""

    hub: EventHub
    relay: EventRelay | None
    engine: LeaseEngine
    revoker: Revoker
    renewer: Renewer
    watch: WatchFlow
    renew: RenewFlow
    rotation: RotationFlow
    scheduled: ScheduledRotation
    revocation: RevocationFlow
    root: RootRotationFlow
    reconciler: Reconciler
    scheduler: JobScheduler

    @property
    def jobs(self) -> list[Periodic]:
        return self.scheduler.jobs


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
    cluster_access: ClusterAccessFlow
    who_can: WhoCanFlow
    rbac: RbacSync
    core: Core
    reading: AuditReading
    listing: LeaseListing
    _stack: AsyncExitStack
    _background: set[asyncio.Task[None]] = field(default_factory=set)

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
        policy = _load_policy(settings)
        ring = settings.sealing.ring()
        sealer = CredentialSealer(ring)
        store = await _open_store(settings, stack, clock, sealer, ring)
        runner = StoreRunner(settings.store.pool_size)
        _on_close(stack, runner.close)
        stores = AsyncStore(store, runner)
        vault = VaultClient(settings.vault)
        _on_close(stack, vault.close)
        clients = {c.name: ClusterClient(c, clock=clock) for c in settings.clusters}
        callers = await _connect(clients, verify_limits(settings.tokens))
        _on_close(stack, callers.close)
        sink = JsonLinesSink(settings.audit.log)
        _on_close(stack, sink.close)
        audit_log: AuditChain
        records: RecordSource
        if settings.audit.sink == "store":
            audit_log = StoreChainLog(store.audit_chain, chain=settings.audit.chain, copy=sink)
            records = StoreRecords(store.audit_chain, settings.audit.chain)
        else:
            audit_log = await asyncio.to_thread(AuditLog, sink, chain=settings.audit.chain)
            records = FileRecords(settings.audit.log)
        audit = AuditTrail(
            audit_log,
            Fingerprinter(settings.audit.hmac_key),
            refusal_summary=settings.tokens.refusal_summary,
        )
        _on_close(stack, audit.close)
        catalog = RoleCatalog(stores.roles, audit.row_refused)
        if settings.roles is not None:
            applied = await catalog.apply(load_roles(settings.roles))
            log.info("roles file applied", path=str(settings.roles), roles=len(applied))
        backends = Backends(vault)
        limits = IssueLimits(settings.limits.per_pod, settings.limits.per_cluster)
        lease_calls = LeaseCallRates(settings.limits, clock)
        hub = EventHub()
        revoker = Revoker(
            store=stores,
            backends=backends,
            audit=audit,
            hub=hub,
            clock=clock,
            backoff=Backoff(settings.revocation.backoff, settings.revocation.backoff_cap),
            claim=timedelta(seconds=settings.vault.timeout) + CLAIM_MARGIN,
        )
        engine = LeaseEngine(
            store=stores,
            backends=backends,
            sealer=sealer,
            audit=audit,
            revoker=revoker,
            clock=clock,
        )
        core = Core(stores, audit, clock, PolicyGate(policy), engine)
        issue = IssueFlow(
            core,
            callers=callers,
            catalog=catalog,
            limits=limits,
            rates=IssueRates(settings.limits, clock),
        )
        release = ReleaseFlow(core, callers=callers, rates=lease_calls)
        rotation = RotationFlow(
            core,
            catalog=catalog,
            hub=hub,
            grace=settings.rotation.grace,
            concurrency=settings.rotation.concurrency,
            resume_after=settings.rotation.resume_after,
        )
        renewer = Renewer(
            core,
            backends=backends,
            hub=hub,
            settings=settings.renewal,
            reissue=rotation.reissue,
        )
        relay = EventRelay.for_store(
            settings.store,
            hub=hub,
            store=stores,
            sealer=sealer,
            signer=EventSigner(ring.derive("events")),
        )
        scheduler = JobScheduler(
            [
                Periodic("renew", settings.renewal.interval, renewer.renew_due, leader_only=False),
                Periodic(
                    "vault-token",
                    settings.vault.token_check_interval,
                    vault.keep_token,
                    leader_only=False,
                ),
                Periodic("revoke", settings.revocation.interval, revoker.revoke_due),
            ],
            leadership_for(settings.store),
            jitter=settings.scheduler.jitter,
            leadership_interval=settings.scheduler.leadership,
        )
        flows = LeaseFlows(
            hub=hub,
            relay=relay,
            engine=engine,
            revoker=revoker,
            renewer=renewer,
            watch=WatchFlow(
                core,
                callers=callers,
                sealer=sealer,
                hub=hub,
                rates=lease_calls,
                streams=WatchStreamCaps(settings.limits),
                recheck=settings.limits.watch_recheck,
                events_heard=None if relay is None else relay.until_listening,
            ),
            renew=RenewFlow(core, callers=callers, renewer=renewer, rates=lease_calls),
            rotation=rotation,
            scheduled=ScheduledRotation(core, catalog=catalog, rotate=rotation.rotate_scheduled),
            revocation=RevocationFlow(core, concurrency=settings.rotation.concurrency),
            root=RootRotationFlow(core, vault=vault),
            reconciler=Reconciler(core, vault=vault, orphan_age=settings.reconcile.orphan_age),
            scheduler=scheduler,
        )
        roles = RoleAdmin(core, catalog)
        pods = PodLeases(core, callers=callers)
        clusters = _cluster_admin(core, settings, callers=callers, sealer=sealer, pods=pods)
        await clusters.load()
        access, cluster_access, who_can, rbac = _access_flows(
            settings, core, backends=backends, callers=callers, catalog=catalog, clusters=clusters
        )
        runtime = cls(
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
            cluster_access,
            who_can,
            rbac,
            core,
            AuditReading(
                core,
                source=records,
                checkpoints=StoreCheckpointSink(store.checkpoints),
                chain=settings.audit.chain,
                vault=vault,
                transit=Transit(settings.audit.transit_mount, settings.audit.transit_key),
            ),
            LeaseListing(core),
            stack,
        )
        runtime._add_leader_jobs()
        return runtime

    def _add_leader_jobs(self) -> None:
        """The periodic jobs only the leading replica runs. Reconcile's first pass runs at
        start (and when a replica takes the lead); then periodically."""
        settings, flows = self.settings, self.flows
        jobs = [
            Periodic("jwks", settings.tokens.jwks_refresh_interval, self.clusters.refresh_keys),
            Periodic("pod-sweep", settings.pods.sweep_interval, self.pods.sweep),
            Periodic("reconcile", settings.reconcile.interval, flows.reconciler.run_once),
            Periodic("rotation-queue", settings.rotation.resume_interval, flows.rotation.resume),
            Periodic("access-expiry", settings.access.expiry_interval, self.access.expire_due),
            Periodic("rbac-sync", settings.access.rbac_sync_interval, self.rbac.sync_once),
            Periodic(
                "cluster-access-cleanup",
                settings.access.expiry_interval,
                self.cluster_access.remove_due,
            ),
            Periodic(
                "scheduled-rotation", settings.rotation.schedule_interval, flows.scheduled.run_once
            ),
            Periodic(
                "store-statistics", settings.store.statistics_interval, self._refresh_statistics
            ),
        ]
        if settings.audit.transit_mount is not None:
            jobs.append(
                Periodic(
                    "audit-checkpoint",
                    settings.audit.checkpoint_interval,
                    self.checkpoint,
                    at_once=False,
                )
            )
        for job in jobs:
            flows.scheduler.add(job)

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads the periodic jobs (always, on SQLite)."""
        return self.flows.scheduler.leadership.is_leader

    def start_jobs(self) -> None:
        """Start the scheduler and the event relay (on the running event loop). The pod
        watches run on the leader: they start when this replica takes the lead."""
        scheduler = self.flows.scheduler
        scheduler.on_leadership(self._leadership_changed)
        scheduler.start()
        if self.flows.relay is not None:
            self.flows.relay.start()

    async def stop_jobs(self) -> None:
        await self.flows.scheduler.stop()
        await self.pods.stop()
        if self.flows.relay is not None:
            await self.flows.relay.stop()

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self.pods.start()
        else:
            task = asyncio.get_running_loop().create_task(self.pods.stop())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refresh_statistics(self) -> bool:
        return await asyncio.to_thread(self.store.refresh_statistics)

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


def _load_policy(settings: BrokerSettings) -> PolicyEngine:
    """The policy set; each permit open to workloads of any cluster is logged as a warning
    (`keyferry policy check` lists the same)."""
    policy = PolicyEngine.from_files(settings.policies)
    for permit in policy.open_permits():
        log.warning("policy does not constrain the cluster", detail=permit.describe())
    return policy


async def _open_store(
    settings: BrokerSettings,
    stack: AsyncExitStack,
    clock: Clock,
    sealer: CredentialSealer,
    ring: KeyRing,
) -> Store:
    """The store, migrated, with role and cluster rows MAC'd and checked; SealingKeysMissing
    when rows name a sealing key the ring does not hold."""
    rows = RowSigner(ring.derive("rows"))
    store = await asyncio.to_thread(partial(Store.open, settings.store, clock, rows=rows))
    _on_close(stack, store.close)
    log.info("sealing keys", current=ring.current.name, also_open=ring.names[1:])
    await asyncio.to_thread(check_ring, store, sealer, ring)
    if store.adopted_rows:
        log.warning(
            "role and cluster rows written before row MACs were given their first MAC "
            "(trusted as they were: docs/security.md, 'Rows and messages the broker trusts')",
            rows=store.adopted_rows,
        )
    return store


def _access_flows(
    settings: BrokerSettings,
    core: Core,
    *,
    backends: Backends,
    callers: Callers,
    catalog: RoleCatalog,
    clusters: ClusterAdmin,
) -> tuple[AccessFlow, ClusterAccessFlow, WhoCanFlow, RbacSync]:
    """Access grants (credentials and member clusters), who-can, and the RBAC sync
    (docs/cluster-access.md)."""
    access = AccessFlow(core, catalog=catalog, backends=backends, settings=settings.access)
    access.on_approve(clusters)
    cluster_access = ClusterAccessFlow(
        core,
        access=access,
        callers=callers,
        settings=settings.access,
        backoff=Backoff(settings.revocation.backoff, settings.revocation.backoff_cap),
    )
    clusters.on_deregister(cluster_access.cluster_leaving)
    who_can = WhoCanFlow(
        core,
        catalog=catalog,
        callers=callers,
        policy_text="\n".join(path.read_text() for path in settings.policies),
        cluster_roles=settings.access.cluster_roles,
    )
    rbac = RbacSync(core, callers=callers, cluster_roles=settings.access.cluster_roles)
    return access, cluster_access, who_can, rbac


def verify_limits(tokens: TokensSettings) -> VerifyLimits:
    return VerifyLimits(
        max_lifetime=tokens.max_lifetime,
        refresh=KeyRefreshPolicy(
            min_interval=tokens.jwks_min_interval, unknown_memory=tokens.unknown_key_memory
        ),
        threads=tokens.verify_threads,
        queue=tokens.verify_queue,
    )


async def _connect(clients: dict[str, ClusterClient], limits: VerifyLimits) -> Callers:
    try:
        return await Callers.connect(clients, limits)
    except BaseException:
        for client in clients.values():
            client.close()
        raise


def _on_close(stack: AsyncExitStack, close: Callable[[], object]) -> None:
    stack.callback(close)


def _cluster_admin(
    core: Core,
    settings: BrokerSettings,
    *,
    callers: Callers,
    sealer: CredentialSealer,
    pods: PodLeases,
) -> ClusterAdmin:
    if settings.cluster_registration.approval == "single":
        log.warning(
            "cluster_registration.approval is single: one operator registers and "
            "deregisters clusters alone (meant for test beds and demos)"
        )
    return ClusterAdmin(
        core,
        configured=settings.clusters,
        callers=callers,
        sealer=sealer,
        pods=pods,
        second_operator=settings.cluster_registration.approval == "required",
        approval_wait=settings.access.approval_wait,
    )
