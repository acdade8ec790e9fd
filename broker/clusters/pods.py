"""Watching a member cluster's pods for the ones that ended, in a thread per cluster; the
watch also keeps the cluster's live pods (live_pods.py) for the pod check of each call.

The kubernetes client's watch is synchronous and blocks on the stream, so each cluster gets
one daemon thread: list pods (remembering the list's resourceVersion), then watch from that
version with a short server-side timeout so a stop request is seen within seconds, and
resume from the last version seen. 410 Gone (the version is too old) relists, and so does
any other failure after a pause (only a full list makes the live pods whole again). The
watch's state (watching, or reconnecting and why) and its last event are recorded in the
cluster's health (health.py). A pod that is
deleted, or whose phase is Succeeded or Failed, is reported through `on_ended` (the
receiver is idempotent). `stop` shuts the stream's socket down, so the thread ends at once
rather than at the watch's timeout. Anything missed while no watch ran is the periodic
sweep's to catch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import urllib3
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from .health import HealthRecorder
from .live_pods import LivePod, LivePods

log = structlog.get_logger("keyferry.pods")
WATCH_SECONDS = 30  # server-side timeout of one watch call; then it resumes
# How long the live pods are trusted without word from the watch: a healthy watch is heard
# from at least every WATCH_SECONDS (its call ends and the next begins), so only a watch
# whose connection hangs without an error reaches this. The bound of docs/security.md.
STALE_AFTER = WATCH_SECONDS + 5.0
RETRY_SECONDS = 2.0
GONE = 410
FINISHED = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class EndedPod:
    cluster: str
    namespace: str
    name: str
    uid: str


class PodWatch:
    """One cluster's pod watch; `start` runs it on its own thread, `stop` ends it."""

    def __init__(
        self,
        cluster: str,
        api: Any,
        on_ended: Callable[[EndedPod], None],
        live: LivePods | None = None,
        health: HealthRecorder | None = None,
    ) -> None:
        self._cluster = cluster
        self._api = api
        self._on_ended = on_ended
        self._live = live if live is not None else LivePods(STALE_AFTER)
        self._health = health if health is not None else HealthRecorder()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"keyferry-pods-{cluster}", daemon=True
        )
        self.resource_version: str | None = None
        self._current: Any = None  # the running kubernetes Watch, to interrupt it

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._live.lost()
        current = self._current
        if current is not None:
            current.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch()
            except ApiException as exc:
                self._live.lost()
                if exc.status == GONE:
                    log.info("pod watch expired; relisting", cluster=self._cluster)
                    self.resource_version = None
                    continue
                self._failed(f"HTTP {exc.status} {exc.reason}")
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                self._failed(f"{type(exc).__name__}: {_reason(exc)}")
        self._live.lost()
        self._health.stopped()

    def _failed(self, error: str) -> None:
        """Untrust the live pods, say why, and relist after a pause: only a full list makes
        the live pods whole again (a resumed watch alone would leave them untrusted)."""
        self._live.lost()
        if self._stop.is_set():
            return
        log.warning("pod watch failed", cluster=self._cluster, error=error)
        self._health.failed(error)
        self.resource_version = None
        self._stop.wait(RETRY_SECONDS)

    def _list(self) -> None:
        pods: Any = k8s.CoreV1Api(self._api).list_pod_for_all_namespaces(
            _request_timeout=WATCH_SECONDS * 2
        )
        for pod in pods.items:
            if _finished(pod):
                self._report(pod)
        self._live.replace((p.metadata.namespace, p.metadata.name, live_pod(p)) for p in pods.items)
        self.resource_version = pods.metadata.resource_version
        self._health.watching()

    def _watch(self) -> None:
        watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        self._current = watch
        if self._stop.is_set():
            return
        stream = watch.stream(  # type: ignore[no-untyped-call]
            k8s.CoreV1Api(self._api).list_pod_for_all_namespaces,
            resource_version=self.resource_version,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
            _request_timeout=WATCH_SECONDS * 2,
        )
        try:
            for event in stream:
                if self._stop.is_set():
                    return
                kind, pod = event["type"], event["object"]
                if kind == "ERROR":
                    code = event["raw_object"].get("code")
                    raise ApiException(status=code, reason="watch error")
                if kind == "BOOKMARK":  # the client leaves a bookmark's object a dict
                    self.resource_version = event["raw_object"]["metadata"]["resourceVersion"]
                    self._live.heard()
                    self._health.event()
                    continue
                self.resource_version = pod.metadata.resource_version
                self._health.event()
                meta = pod.metadata
                if kind == "DELETED":
                    self._live.remove(meta.namespace, meta.name, meta.uid)
                else:
                    self._live.put(meta.namespace, meta.name, live_pod(pod))
                if kind == "DELETED" or (kind == "MODIFIED" and _finished(pod)):
                    self._report(pod)
            self._live.heard()  # the call ended at its timeout: the watch resumes now
            self._health.watching()
        finally:
            self._current = None
            watch.stop()  # type: ignore[no-untyped-call]

    def _report(self, pod: Any) -> None:
        ended = EndedPod(self._cluster, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        try:
            self._on_ended(ended)
        except Exception:  # a callback's failure must not end the cluster's watch
            log.exception("handling an ended pod failed", cluster=self._cluster)


def _reason(exc: Exception) -> str:
    """The cause of a failed call, without urllib3's pool and URL preamble."""
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)


def _finished(pod: Any) -> bool:
    return pod.status is not None and pod.status.phase in FINISHED


def live_pod(pod: Any) -> LivePod:
    ending = pod.metadata.deletion_timestamp is not None or _finished(pod)
    spec = getattr(pod, "spec", None)  # a watch event's object may carry no spec
    account = (spec.service_account_name if spec is not None else None) or "default"
    return LivePod(str(pod.metadata.uid), ending, account)
