"""Leases die with their pod: a pod watch per cluster revokes the leases of a pod that was
deleted or finished within seconds, and a periodic sweep revokes those whose pod (name and
UID) no longer runs, whatever a watch missed (a broker restart, a stopped watch, a relist).

Deleting a namespace deletes its pods, so the watch sees each of them go. The watches run
on threads (broker.clusters.pods); what they report is handled here, on the event loop.
Each lease is ended by the lease engine (audited `lease.revoking`, reason POD_ENDED): the
row is revoking before Vault is asked, and a lease Vault does not revoke now stays queued
and is retried until it is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import timedelta

import structlog

from broker.clusters import ClusterClient, ClusterUnavailable, EndedPod, PodWatch
from broker.errors import KeyferryError
from broker.store import LeaseRecord, Selector

from ..common.audit_trail import system_principal
from ..common.callers import Callers
from ..core import Core

log = structlog.get_logger("keyferry.pod_leases")
SWEEP_INTERVAL = timedelta(seconds=60)
WATCH_JOB, SWEEP_JOB = "broker.pod-watch", "broker.pod-sweep"
POD_ENDED = "POD_ENDED"


class PodLeases:
    def __init__(self, core: Core, *, callers: Callers) -> None:
        self._callers = callers
        self._leases = core.store.leases
        self._engine = core.engine
        self._watches: dict[str, PodWatch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Watch the pods of every cluster known now (and of each one `watch`ed later)."""
        self._loop = asyncio.get_running_loop()
        for client in self._callers.clients():
            self.watch(client)

    def watch(self, client: ClusterClient) -> None:
        name = client.config.name
        if self._loop is None or name in self._watches:
            return  # not started yet: `start` picks it up
        self._watches[name] = watch = client.pod_watch(self._report)
        watch.start()

    async def unwatch(self, name: str) -> None:
        watch = self._watches.pop(name, None)
        if watch is not None:
            await asyncio.to_thread(watch.stop)

    async def stop(self) -> None:
        await asyncio.gather(*(self.unwatch(name) for name in list(self._watches)))
        self._loop = None

    async def end_pod(self, pod: EndedPod, job: str = WATCH_JOB) -> int:
        """Revoke every live lease of the pod (name and UID); how many were revoked now."""
        selector = Selector(cluster=pod.cluster, namespace=pod.namespace, pod_name=pod.name)
        leases = await self._leases.list_by_selector(selector)
        return await self._end([lease for lease in leases if lease.pod_uid == pod.uid], job)

    async def sweep(self) -> int:
        """Revoke the live leases whose pod no longer runs with their UID; how many."""
        done = 0
        for client in self._callers.clients():
            name = client.config.name
            leases = await self._leases.list_by_selector(Selector(cluster=name))
            by_pod: dict[tuple[str, str], list[LeaseRecord]] = defaultdict(list)
            for lease in leases:
                by_pod[(lease.namespace, lease.pod_name)].append(lease)
            try:
                for (namespace, pod), held in by_pod.items():
                    uid = await client.live_pod_uid(namespace, pod)
                    done += await self._end([x for x in held if x.pod_uid != uid], SWEEP_JOB)
            except ClusterUnavailable as error:
                log.warning("pod sweep skipped a cluster", cluster=name, error=error.message)
        return done

    async def _end(self, leases: list[LeaseRecord], job: str) -> int:
        done = 0
        for lease in leases:
            try:
                await self._engine.end(lease, system_principal(job), POD_ENDED, uuid.uuid4().hex)
            except KeyferryError as error:
                log.warning("lease of an ended pod queued", lease_id=lease.id, error=error.message)
            else:
                done += 1
        return done

    def _report(self, pod: EndedPod) -> None:
        """From a watch thread: hand the ended pod to the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.end_pod(pod), loop)
