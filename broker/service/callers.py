"""Who is calling: a bearer token verified against its cluster's keys, and its pod still there.

Token verification is CPU work plus, on an unknown key id, a JWKS fetch from the cluster;
it runs on a worker thread, and the fetch is scheduled back on the event loop (the cluster
client is async) while that thread waits for it with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from broker.clusters import ClusterClient
from broker.errors import Unauthenticated
from broker.identity import ClusterKeys, TokenVerifier
from broker.policy import Workload

BEARER = "bearer "
VERIFY_THREADS = 4
# Told about every refused token before the error goes back (the audit trail's deny record);
# the workload is None when the token itself proved no pod.
Refused = Callable[[Unauthenticated, Workload | None], Awaitable[None]]


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
    ) -> None:
        self._verifier = verifier
        self._clients = clients
        self._keys = keys if keys is not None else {}
        self._pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="keyferry-verify")

    @classmethod
    async def connect(cls, clients: Mapping[str, ClusterClient]) -> Callers:
        """Fetch every cluster's JWKS now; a cluster that does not answer stops the start."""
        loop = asyncio.get_running_loop()
        keys: dict[str, ClusterKeys] = {}
        for name, client in clients.items():
            keys[name] = ClusterKeys(
                name, client.config.issuer, await client.jwks(), refresh=_refresher(client, loop)
            )
        return cls(TokenVerifier(keys), dict(clients), keys)

    def join(self, client: ClusterClient, jwks: Mapping[str, Any]) -> None:
        """Accept tokens of one more cluster from now on (its JWKS already fetched)."""
        loop = asyncio.get_running_loop()
        name = client.config.name
        self._keys[name] = ClusterKeys(
            name, client.config.issuer, jwks, refresh=_refresher(client, loop)
        )
        self._clients[name] = client

    def leave(self, name: str) -> None:
        """Refuse the cluster's tokens from now on and close its client."""
        self._keys.pop(name, None)
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
        loop = asyncio.get_running_loop()
        proved: Workload | None = None
        try:
            workload, expires_at = await loop.run_in_executor(
                self._pool, self._verifier.verify_until, token
            )
            proved = workload
            await self._clients[workload.cluster].ensure_pod_bound(
                workload, allow_terminating=allow_terminating
            )
        except Unauthenticated as error:
            if refused is not None:
                await refused(error, proved)
            raise
        return workload, expires_at

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()


def _refresher(client: ClusterClient, loop: asyncio.AbstractEventLoop) -> Any:
    def refresh() -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(client.jwks(), loop)
        return future.result(timeout=client.timeout + 1)

    return refresh
