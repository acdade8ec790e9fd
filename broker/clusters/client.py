"""Calls the broker makes to a member cluster's API server, off the event loop, with deadlines.

The kubernetes client is synchronous: every call runs on a small dedicated thread pool and
is bounded by `timeout`, and every kubernetes/urllib3 failure leaves as an error of the
broker's tree (ClusterUnavailable, or Unauthenticated for a pod that is gone).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from broker import errors
from broker.clock import Clock, utcnow
from broker.policy import Workload

from .config import ClusterConfig
from .connection import ClusterConnection, api_client
from .health import ClusterHealth, HealthRecorder
from .live_pods import LivePod, LivePods
from .pods import FINISHED, STALE_AFTER, EndedPod, PodWatch, live_pod

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL = 8


class ClusterUnavailable(errors.TemporaryError):
    """The member cluster's API server did not answer in time, or answered with an error."""

    reason = "UNAVAILABLE"


class ClusterTlsFailed(ClusterUnavailable):
    """The API server's certificate did not verify against the CA bundle (or TLS failed)."""


class ClusterAuthFailed(ClusterUnavailable):
    """The API server did not accept the broker's credential (HTTP 401)."""


class ClusterForbidden(ClusterUnavailable):
    """The broker's credential is valid but its RBAC does not allow the call (HTTP 403)."""


class ClusterClient:
    def __init__(
        self,
        config: ClusterConfig | ClusterConnection,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pool: ThreadPoolExecutor | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self._health = HealthRecorder(clock)
        self.timeout = timeout
        self._pool = pool or ThreadPoolExecutor(
            DEFAULT_POOL, thread_name_prefix=f"k8s-{config.name}"
        )
        self._files: tempfile.TemporaryDirectory[str] | None = None
        self.live_pods = LivePods(STALE_AFTER)  # fed by pod_watch(), read by ensure_pod_bound
        self._api: Any
        if isinstance(config, ClusterConnection):
            self._api, self._files = api_client(config)
        else:
            self._api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(config.kubeconfig), context=config.context
            )

    @property
    def server(self) -> str:
        """The API server's URL (from the kubeconfig for a cluster of the config file)."""
        return str(self._api.configuration.host)

    def health(self) -> ClusterHealth:
        """When its API server last answered, when its JWKS was fetched, its pod watch."""
        return self._health.read()

    def close(self) -> None:
        self._api.close()
        if self._files is not None:
            self._files.cleanup()

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self._pool, fn), self.timeout)
        except TimeoutError as exc:
            raise ClusterUnavailable(
                f"cluster {self.config.name!r} did not answer {what} within {self.timeout:.0f}s"
            ) from exc
        except ApiException as exc:
            body = (exc.body or "")[:300] if isinstance(exc.body, str) else ""
            kind = {401: ClusterAuthFailed, 403: ClusterForbidden}.get(
                exc.status or 0, ClusterUnavailable
            )
            raise kind(
                f"cluster {self.config.name!r} refused {what}: "
                f"HTTP {exc.status} {exc.reason} {body}"
            ) from exc
        except urllib3.exceptions.SSLError as exc:
            raise ClusterTlsFailed(
                f"cluster {self.config.name!r}: TLS failed for {what}: {exc}"
            ) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            kind = (
                ClusterTlsFailed
                if isinstance(exc.reason, ssl.SSLError | urllib3.exceptions.SSLError)
                else ClusterUnavailable
            )
            raise kind(
                f"cluster {self.config.name!r} is unreachable for {what}: {exc.reason}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailable(
                f"cluster {self.config.name!r} is unreachable for {what}: {exc}"
            ) from exc
        self._health.contact()
        return result

    async def run(self, what: str, fn: Callable[[Any], T]) -> T:
        """`fn(api_client)` off the event loop, bounded and with the errors of every call
        here (rbac.py's calls)."""
        return await self._call(what, lambda: fn(self._api))

    def endpoint(self) -> tuple[str, str]:
        """The API server's URL and CA bundle (PEM), as the broker reaches it."""
        if isinstance(self.config, ClusterConnection):
            return self.config.server, self.config.ca_pem
        configuration = self._api.configuration
        ca_file = configuration.ssl_ca_cert
        ca = Path(ca_file).read_text() if ca_file else ""
        return str(configuration.host), ca

    async def jwks(self) -> dict[str, Any]:
        """The cluster's service-account signing keys, from /openid/v1/jwks."""

        def get() -> bytes:
            # Raw body: the client would otherwise turn the JSON into a Python repr string.
            response: Any = k8s.OpenidApi(self._api).get_service_account_issuer_open_id_keyset(
                _request_timeout=self.timeout, _preload_content=False
            )
            return bytes(response.data)

        keys = _json_object(await self._call("GET /openid/v1/jwks", get), "/openid/v1/jwks")
        self._health.jwks_fetched()
        return keys

    async def openid_configuration(self) -> dict[str, Any]:
        def get() -> bytes:
            api = k8s.WellKnownApi(self._api)
            response: Any = api.get_service_account_issuer_open_id_configuration(
                _request_timeout=self.timeout, _preload_content=False
            )
            return bytes(response.data)

        path = "/.well-known/openid-configuration"
        return _json_object(await self._call(f"GET {path}", get), path)

    async def list_pods_probe(self) -> None:
        """List at most one pod in all namespaces: proves the broker may list pods."""

        def probe() -> None:
            k8s.CoreV1Api(self._api).list_pod_for_all_namespaces(
                limit=1, _request_timeout=self.timeout
            )

        await self._call("list pods", probe)

    def pod_watch(self, on_ended: Callable[[EndedPod], None]) -> PodWatch:
        """A watch of this cluster's pods reporting each one that ended (not started yet);
        while it runs it keeps `live_pods`, which answers ensure_pod_bound without a call."""
        return PodWatch(self.config.name, self._api, on_ended, self.live_pods, self._health)

    async def pods_now(self) -> tuple[list[tuple[str, str, LivePod]], str]:
        """The cluster's pods as (namespace, name, pod) and where they came from: the pod
        watch's live set while it is trusted ("watch"), else one list of the API server
        ("listed")."""
        held = self.live_pods.snapshot()
        if held is not None:
            return held, "watch"

        def listed() -> list[tuple[str, str, LivePod]]:
            pods: Any = k8s.CoreV1Api(self._api).list_pod_for_all_namespaces(
                _request_timeout=self.timeout
            )
            return [(p.metadata.namespace, p.metadata.name, live_pod(p)) for p in pods.items]

        return await self._call("list pods", listed), "listed"

    async def live_pod_uid(self, namespace: str, name: str) -> str | None:
        """The UID of the pod if it exists and has not finished; None otherwise."""

        def read() -> Any:
            try:
                return k8s.CoreV1Api(self._api).read_namespaced_pod(
                    name, namespace, _request_timeout=self.timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        pod = await self._call(f"GET pod {namespace}/{name}", read)
        if pod is None or (pod.status is not None and pod.status.phase in FINISHED):
            return None
        return str(pod.metadata.uid)

    async def ensure_pod_bound(
        self, workload: Workload, *, allow_terminating: bool = False
    ) -> None:
        """The token's pod must still exist with the token's UID (a deleted pod's token is dead).

        A terminating or finished pod gets no new credentials; `allow_terminating` accepts it
        for calls that only give something back (Release at agent shutdown).

        The pod watch's live pods answer first when they vouch for the pod (live_pods.py:
        only a positive answer is taken from them, and only while the watch is whole and
        fresh); otherwise the API server is asked.
        """
        if self.live_pods.vouches(
            workload.namespace,
            workload.pod,
            workload.pod_uid,
            allow_ending=allow_terminating,
        ):
            return

        def read() -> dict[str, Any] | None:
            # Raw JSON: the client's model deserialisation of a whole Pod costs more than
            # the request itself, and only three fields are read (issue 9 profile).
            try:
                response: Any = k8s.CoreV1Api(self._api).read_namespaced_pod(
                    workload.pod,
                    workload.namespace,
                    _request_timeout=self.timeout,
                    _preload_content=False,
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return _json_object(response.data.decode(), "GET pod")

        pod = await self._call(f"GET pod {workload.namespace}/{workload.pod}", read)
        if pod is None:
            raise errors.Unauthenticated(
                f"pod {workload.namespace}/{workload.pod} in cluster {workload.cluster!r} "
                "no longer exists; its token is not accepted"
            )
        metadata = pod.get("metadata") or {}
        if metadata.get("uid") != workload.pod_uid:
            raise errors.Unauthenticated(
                f"pod {workload.namespace}/{workload.pod} in cluster {workload.cluster!r} was "
                "replaced (its UID changed); the old pod's token is not accepted"
            )
        if allow_terminating:
            return
        phase = (pod.get("status") or {}).get("phase")
        if metadata.get("deletionTimestamp") is not None or phase in FINISHED:
            raise errors.Unauthenticated(
                f"pod {workload.namespace}/{workload.pod} is terminating or finished; "
                "no new credentials are issued to it"
            )


def _json_object(body: bytes, path: str) -> dict[str, Any]:
    try:
        value = json.loads(body)  # not UTF-8 is a ValueError too
    except ValueError as exc:
        raise ClusterUnavailable(f"{path} did not return JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ClusterUnavailable(f"{path} did not return a JSON object")
    return value
