"""Prometheus metrics of one broker, on a registry of its own (several brokers may share a
process in tests), served on their own HTTP port."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

ISSUE = "BrokerService/Issue"
RELEASE = "BrokerService/Release"
RENEW = "BrokerService/Renew"
ROTATE = "RotationService/RotateLeases"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BrokerMetrics:
    def __init__(
        self,
        live_leases: Callable[[], float],
        pending_revocations: Callable[[], float] | None = None,
        leader: Callable[[], float] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "keyferry_calls",
            "gRPC calls by method and outcome: ok (or issued, replayed, rotated), the error "
            "reason in lowercase, cancelled or internal",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "keyferry_call_duration_seconds",
            "Time to answer a gRPC call (a stream's lifetime for streaming methods)",
            ["method", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.issues = Counter(
            "keyferry_issue",
            "Issue calls by outcome: issued, replayed, or the error reason in lowercase",
            ["outcome"],
            registry=self.registry,
        )
        self.issue_seconds = Histogram(
            "keyferry_issue_duration_seconds",
            "Time to answer an Issue call",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.releases = Counter(
            "keyferry_release", "Release calls by outcome", ["outcome"], registry=self.registry
        )
        self.renews = Counter(
            "keyferry_renew", "Renew calls by outcome", ["outcome"], registry=self.registry
        )
        self.rotations = Counter(
            "keyferry_rotate",
            "RotateLeases calls by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.watch_streams = Gauge(
            "keyferry_watch_streams", "Open Watch streams", registry=self.registry
        )
        self.watch_ends = Counter(
            "keyferry_watch_end",
            "Watch streams the broker ended, by reason (token_invalid at token expiry)",
            ["reason"],
            registry=self.registry,
        )
        self.restart_acks = Counter(
            "keyferry_restart_acks",
            "Acks of rotations an agent put in use by restarting app containers "
            "(on-rotate: restart; several rotations coalesced into one restart Ack each)",
            registry=self.registry,
        )
        self.active_leases = Gauge(
            "keyferry_active_leases",
            "Live (pending or active) leases in the lease store",
            registry=self.registry,
        )
        self.active_leases.set_function(live_leases)
        self.pending_revocations = Gauge(
            "keyferry_pending_revocations",
            "Leases queued for revocation at Vault (due now or waiting for a retry); "
            "revocation never gives up, so this only falls when Vault answers",
            registry=self.registry,
        )
        self.leader = Gauge(
            "keyferry_leader",
            "1 while this replica leads the periodic jobs, else 0",
            registry=self.registry,
        )
        if pending_revocations is not None:
            self.pending_revocations.set_function(pending_revocations)
        if leader is not None:
            self.leader.set_function(leader)
        self._event_refusals: Callable[[], Mapping[str, int]] = dict
        self.registry.register(
            _Counted(
                "keyferry_event_notifications_refused",
                "Cross-replica event notifications dropped, by reason: unauthenticated (no or "
                "a wrong MAC: not sent by a replica), not_owner, stale or unreadable",
                "reason",
                self._read_event_refusals,
            )
        )
        self._http: tuple[WSGIServer, Thread] | None = None

    def _read_event_refusals(self) -> Mapping[str, int]:
        return self._event_refusals()

    def count_event_refusals(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Where keyferry_event_notifications_refused comes from: the event relay's
        refusals by reason (no relay, no series)."""
        self._event_refusals = counts

    def record(self, method: str, outcome: str, seconds: float) -> None:
        """One answered call of `method` ("BrokerService/Issue"), by the call interceptor;
        the per-method families that predate `keyferry_calls` count their method too."""
        self.calls.labels(method, outcome).inc()
        self.call_seconds.labels(method, outcome).observe(seconds)
        if method == ISSUE:
            self.issues.labels(outcome).inc()
            self.issue_seconds.labels(outcome).observe(seconds)
        counter = {RELEASE: self.releases, RENEW: self.renews, ROTATE: self.rotations}.get(method)
        if counter is not None:
            counter.labels(outcome).inc()

    def serve(self, host: str, port: int) -> int:
        """Start /metrics; the bound port (port 0 picks one)."""
        self._http = start_http_server(port, host, registry=self.registry)
        return int(self._http[0].server_port)

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None


class _Counted(Collector):
    def __init__(
        self, name: str, documentation: str, label: str, counts: Callable[[], Mapping[str, int]]
    ) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for key, value in sorted(self._counts().items()):
            family.add_metric([key], value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, labels=[self._label])
