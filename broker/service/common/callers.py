"""Who is calling: a bearer token verified against its cluster's keys, and its pod still there.

A token is read in two steps (broker.identity): which cluster and key id it claims, on the
event loop (a few microseconds), then its signature and claims, on a worker thread of that
cluster's lane. The key is found between the two, on the loop: a key id the cluster's JWKS
lacks fetches the JWKS anew only as the cluster's `KeyRefreshPolicy` allows, and one fetch
at a time per cluster (every caller waiting for the same fetch shares it, and waiting
costs no thread). So a token with a random key id costs no thread and at most one fetch
per `min_interval` per cluster, whoever sends it.

Each cluster has its own lane: `threads` worker threads and room for `queue` more calls
waiting for one. A call that finds its cluster's lane full is refused at once with
LimitExceeded (RESOURCE_EXHAUSTED) rather than queued without end; other clusters' lanes
are not touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jwt
import structlog

from broker import tracing
from broker.clusters import ClusterClient
from broker.errors import LimitExceeded, Unauthenticated
from broker.identity import (
    DEFAULT_MAX_LIFETIME,
    Claimed,
    ClusterKeys,
    KeyRefreshPolicy,
    TokenVerifier,
    unknown_key,
)
from broker.policy import Workload

log = structlog.get_logger("keyferry.callers")
BEARER = "bearer "
# Told about every refused token before the error goes back (the audit trail's deny record);
# the workload is None when the token itself proved no pod.
Refused = Callable[[Unauthenticated, Workload | None], Awaitable[None]]


@dataclass(frozen=True)
class VerifyLimits:
    """What checking tokens may cost: the verifier's bounds and each cluster's lane."""

    max_lifetime: timedelta = DEFAULT_MAX_LIFETIME
    refresh: KeyRefreshPolicy = field(default_factory=KeyRefreshPolicy)
    threads: int = 2
    queue: int = 64


class Lane:
    """One cluster's verification threads, and how many calls hold or wait for one."""

    def __init__(self, cluster: str, limits: VerifyLimits) -> None:
        self.cluster = cluster
        self.capacity = limits.threads + limits.queue
        self.busy = 0
        self.pool = ThreadPoolExecutor(limits.threads, thread_name_prefix=f"verify-{cluster}")

    async def run(self, fn: Callable[[], Any]) -> Any:
        if self.busy >= self.capacity:
            raise LimitExceeded(
                f"cluster {self.cluster!r} has {self.busy} token checks running or waiting, "
                f"its most (tokens.verify_threads + tokens.verify_queue); retry in a second",
                retry_after=1.0,
            )
        self.busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn)
        finally:
            self.busy -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token of an `authorization: Bearer <token>` header; Unauthenticated otherwise."""
    value = metadata.get("authorization", "")
    if not value.lower().startswith(BEARER) or not value[len(BEARER) :].strip():
        raise Unauthenticated(
            "send the pod's projected service-account token as `authorization: Bearer <token>`"
        )
    return value[len(BEARER) :].strip()


class Callers:
    def __init__(
        self,
        verifier: TokenVerifier,
        clients: dict[str, ClusterClient],
        keys: dict[str, ClusterKeys] | None = None,
        limits: VerifyLimits | None = None,
    ) -> None:
        self._verifier = verifier
        self._clients = clients
        self._keys = keys if keys is not None else {}
        self._limits = limits or VerifyLimits()
        self._lanes: dict[str, Lane] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self.jwks_fetches: dict[str, int] = {}
        """JWKS fetches an unknown key id caused, by cluster (tests and figures)."""

    @classmethod
    async def connect(
        cls, clients: Mapping[str, ClusterClient], limits: VerifyLimits | None = None
    ) -> Callers:
        """Fetch every cluster's JWKS now; a cluster that does not answer stops the start."""
        limits = limits or VerifyLimits()
        keys: dict[str, ClusterKeys] = {}
        for name, client in clients.items():
            keys[name] = ClusterKeys(
                name, client.config.issuer, await client.jwks(), policy=limits.refresh
            )
        verifier = TokenVerifier(keys, max_lifetime=limits.max_lifetime)
        return cls(verifier, dict(clients), keys, limits)

    def join(self, client: ClusterClient, jwks: Mapping[str, Any]) -> None:
        """Accept tokens of one more cluster from now on (its JWKS already fetched), or
        hold a cluster's freshly fetched JWKS."""
        name = client.config.name
        self._keys[name] = ClusterKeys(
            name, client.config.issuer, jwks, policy=self._limits.refresh
        )
        self._clients[name] = client

    def leave(self, name: str) -> None:
        """Refuse the cluster's tokens from now on and close its client."""
        self._keys.pop(name, None)
        lane = self._lanes.pop(name, None)
        if lane is not None:
            lane.close()
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def keys(self) -> dict[str, ClusterKeys]:
        """Every cluster's pinned keys, by name (a copy of the mapping)."""
        return dict(self._keys)

    def client(self, name: str) -> ClusterClient | None:
        return self._clients.get(name)

    def clients(self) -> list[ClusterClient]:
        return list(self._clients.values())

    def lane(self, cluster: str) -> Lane:
        lane = self._lanes.get(cluster)
        if lane is None:
            lane = self._lanes[cluster] = Lane(cluster, self._limits)
        return lane

    async def authenticate(
        self, token: str, *, allow_terminating: bool = False, refused: Refused | None = None
    ) -> Workload:
        """The pod the token proves, after checking the pod still exists with its UID."""
        workload, _expires_at = await self.authenticate_until(
            token, allow_terminating=allow_terminating, refused=refused
        )
        return workload

    async def authenticate_until(
        self, token: str, *, allow_terminating: bool = False, refused: Refused | None = None
    ) -> tuple[Workload, datetime]:
        """Like `authenticate`, and when the token expires (a Watch stream ends then).
        A refused token is reported to `refused` (the audit trail) before it is raised."""
        proved: Workload | None = None
        try:
            with tracing.span("authenticate") as step:
                workload, expires_at = await self.verify(token)
                step.set("keyferry.cluster", workload.cluster)
            proved = workload
            with tracing.span("pod check", {"keyferry.cluster": workload.cluster}):
                await self._clients[workload.cluster].ensure_pod_bound(
                    workload, allow_terminating=allow_terminating
                )
        except Unauthenticated as error:
            if refused is not None:
                await refused(error, proved)
            raise
        return workload, expires_at

    async def verify(self, token: str) -> tuple[Workload, datetime]:
        """The pod the token proves (its signature and claims; the pod is not asked)."""
        claimed = self._verifier.claim(token)
        key = await self._key(claimed)
        if key is None:
            raise unknown_key(claimed)
        lane = self.lane(claimed.cluster.name)
        result: tuple[Workload, datetime] = await lane.run(
            lambda: self._verifier.check(token, claimed, key)
        )
        return result

    async def _key(self, claimed: Claimed) -> jwt.PyJWK | None:
        keys = claimed.cluster
        key = keys.known(claimed.kid)
        if key is None and keys.fetch_allowed(claimed.kid):
            await self._fetch(keys)
            key = keys.known(claimed.kid)
            if key is None:
                keys.not_found(claimed.kid)
        return key

    async def _fetch(self, keys: ClusterKeys) -> None:
        """Fetch the cluster's JWKS, or wait for the fetch already on its way."""
        task = self._fetches.get(keys.name)
        if task is None or task.done():
            keys.fetching()
            task = asyncio.get_running_loop().create_task(self._fetch_now(keys))
            # Read the outcome even when every waiter has gone (no "never retrieved" noise).
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._fetches[keys.name] = task
        await asyncio.shield(task)

    async def _fetch_now(self, keys: ClusterKeys) -> None:
        client = self._clients.get(keys.name)
        if client is None:
            return
        self.jwks_fetches[keys.name] = self.jwks_fetches.get(keys.name, 0) + 1
        log.info("jwks fetched for an unknown key id", cluster=keys.name)
        keys.loaded(await client.jwks())

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        for client in self._clients.values():
            client.close()
