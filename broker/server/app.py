"""create_server: the broker's listeners around one runtime.

Two gRPC servers, because a Python gRPC server cannot require client certificates on one
port and not another, and ops methods must never be reachable by pods:

- workload: TLS, BrokerService (bearer token per call), health, and reflection only when
  `workload.reflection` is set; requests above `workload.max_message_bytes` are refused
  before they are decoded, and clients that ping too often are disconnected;
- admin: mutual TLS required (client certificates must chain to `admin.client_ca`; the
  subject names the operator), RolesService, RotationService, ClustersService,
  AccessService, AuditService, LeasesService, health, reflection. Without
  `admin.*` files configured no admin listener is served (nothing is reachable).
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from broker.api.v1 import (
    access_pb2,
    access_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    broker_pb2,
    broker_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    leases_pb2,
    leases_pb2_grpc,
    roles_pb2,
    roles_pb2_grpc,
    rotation_pb2,
    rotation_pb2_grpc,
)
from broker.clock import Clock, utcnow
from broker.errors import InvalidRequest, KeyferryError
from broker.identity.admin_pki import CA_KEY
from broker.identity.operators import RevokedSerials
from broker.service import BrokerRuntime
from broker.settings import AdminListener, BrokerSettings, WorkloadListener

from .access_servicer import AccessServicer
from .broker_servicer import BrokerServicer
from .clusters_servicer import ClustersServicer
from .interceptors import CallInterceptor
from .metrics import BrokerMetrics
from .operators import OperatorGate
from .records_servicer import AuditServicer, LeasesServicer
from .roles_servicer import RolesServicer
from .rotation_servicer import RotationServicer
from .tls import TlsIdentity, workload_identity

log = structlog.get_logger("keyferry.server")
BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name
ROLES_SERVICE = roles_pb2.DESCRIPTOR.services_by_name["RolesService"].full_name
ROTATION_SERVICE = rotation_pb2.DESCRIPTOR.services_by_name["RotationService"].full_name
CLUSTERS_SERVICE = clusters_pb2.DESCRIPTOR.services_by_name["ClustersService"].full_name
ACCESS_SERVICE = access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name
AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
LEASES_SERVICE = leases_pb2.DESCRIPTOR.services_by_name["LeasesService"].full_name
SERVER_OPTIONS: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]
# Connection limits on the workload port. A client may ping at most once a minute, and only
# while it has a call open (an agent's Watch stream); past two strikes the connection is
# closed (GOAWAY too_many_pings). The server pings a connection silent for 5 minutes and
# drops it when no answer comes in 20 s, so dead peers free their streams; a connection
# with no call open for 5 minutes is closed (an agent's channel reconnects when it needs
# to). At most 100 calls share one connection (an agent opens one or two).
CONNECTION_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 60_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.http2.max_pings_without_data", 0),  # the server's own pings: no cap
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_connection_idle_ms", 300_000),
    ("grpc.max_concurrent_streams", 100),
]
DEFAULT_GRACE = 5.0


class BrokerServer:
    """The running broker: start, stop (gracefully), and where it listens."""

    def __init__(
        self,
        runtime: BrokerRuntime,
        workload: grpc.aio.Server,
        admin: grpc.aio.Server | None,
        health: list[tuple[health_aio.HealthServicer, list[str]]],
        metrics: BrokerMetrics,
        *,
        port: int,
        admin_port: int | None,
        tls: TlsIdentity,
    ) -> None:
        self.runtime = runtime
        self.port = port
        self.admin_port = admin_port
        self.tls = tls
        self.metrics_port: int | None = None
        self._workload = workload
        self._admin = admin
        self._health = health
        self._metrics = metrics
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        await self._workload.start()
        if self._admin is not None:
            await self._admin.start()
        else:
            log.warning(
                "no admin listener: admin.tls_cert, admin.tls_key and admin.client_ca are "
                "unset (run `keyferry admin init`)"
            )
        settings = self.runtime.settings.metrics
        if settings.port is not None:
            self.metrics_port = self._metrics.serve(settings.host, settings.port)
        for health, services in self._health:
            for name in ["", *services]:
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.runtime.start_jobs()
        log.info(
            "broker serving",
            workload_port=self.port,
            admin_port=self.admin_port,
            metrics_port=self.metrics_port,
        )

    async def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Refuse new calls, let running ones finish for `grace` seconds, then close all."""
        if self._stopped.is_set():
            return
        for health, _services in self._health:
            await health.enter_graceful_shutdown()
        await self.runtime.stop_jobs()
        servers = [self._workload] if self._admin is None else [self._workload, self._admin]
        await asyncio.gather(*(server.stop(grace) for server in servers))
        try:
            if await self.runtime.checkpoint():
                log.info("audit checkpoint signed")
        except KeyferryError as error:
            log.warning("could not sign an audit checkpoint at stop", error=error.message)
        finally:
            self._metrics.close()
            await self.runtime.close()
            self._stopped.set()
        log.info("broker stopped")

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


async def create_server(
    settings: BrokerSettings, *, clock: Clock = utcnow
) -> tuple[BrokerServer, int]:
    """Open the runtime and bind both listeners; `start()` begins serving. The bound
    workload port is returned (settings may ask for port 0). `clock` is the broker's now
    (tests pass a controlled one)."""
    runtime = await BrokerRuntime.open(settings, clock)
    try:
        return _assemble(settings, runtime)
    except BaseException:
        await runtime.close()
        raise


def _assemble(settings: BrokerSettings, runtime: BrokerRuntime) -> tuple[BrokerServer, int]:
    def live_leases() -> float:
        try:
            return float(runtime.store.leases.count_live())
        except KeyferryError:
            return float("nan")  # the store did not answer this scrape

    def pending_revocations() -> float:
        try:
            return float(runtime.store.leases.count_revoking())
        except KeyferryError:
            return float("nan")

    metrics = BrokerMetrics(live_leases, pending_revocations, lambda: float(runtime.is_leader))
    relay = runtime.flows.relay
    if relay is not None:
        refusals = relay.refusals
        metrics.count_event_refusals(lambda: {k.value: n for k, n in refusals.counts.items()})
    tls = workload_identity(settings.workload, settings.data_dir)
    if tls.generated:
        log.warning(
            "no workload TLS certificate configured: serving a generated self-signed one "
            "(development only)",
            cert=str(tls.cert_path),
            key=str(tls.key_path),
        )

    workload = grpc.aio.server(
        options=workload_options(settings.workload), interceptors=[CallInterceptor(metrics)]
    )
    flows = runtime.flows
    servicer = BrokerServicer(
        issue=runtime.issue,
        release=runtime.release,
        watch=flows.watch,
        renew=flows.renew,
        metrics=metrics,
    )
    broker_pb2_grpc.add_BrokerServiceServicer_to_server(servicer, workload)
    workload_health = (
        _health(workload, [BROKER_SERVICE], reflect=settings.workload.reflection),
        [BROKER_SERVICE],
    )
    credentials = grpc.ssl_server_credentials([tls.pem_pair()])
    address = f"{settings.workload.host}:{settings.workload.port}"
    try:
        port = workload.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise InvalidRequest(
            "workload.port", f"cannot listen on {address}: {exc}; pick a free port"
        ) from exc

    admin, admin_port, admin_health = None, None, []
    if settings.admin.enabled:
        admin, admin_port, health = _admin_listener(settings.admin, runtime, metrics)
        admin_health = [health]
    server = BrokerServer(
        runtime,
        workload,
        admin,
        [workload_health, *admin_health],
        metrics,
        port=port,
        admin_port=admin_port,
        tls=tls,
    )
    return server, port


def _admin_listener(
    listener: AdminListener, runtime: BrokerRuntime, metrics: BrokerMetrics
) -> tuple[grpc.aio.Server, int, tuple[health_aio.HealthServicer, list[str]]]:
    """The mutual-TLS admin server: a client certificate from the admin CA is required
    for the handshake itself, so nothing without one reaches a servicer."""
    if listener.tls_cert is None or listener.tls_key is None or listener.client_ca is None:
        raise InvalidRequest("admin", "set tls_cert, tls_key and client_ca")
    if (listener.client_ca.parent / CA_KEY).exists():
        log.warning(
            "the admin CA's private key is in the folder of admin.client_ca: keep it off "
            "the broker's hosts (docs/install.md, 'Operators')",
            folder=str(listener.client_ca.parent),
        )
    gate = None
    if listener.revoked_operators is not None:
        gate = OperatorGate(RevokedSerials(listener.revoked_operators))
    admin = grpc.aio.server(
        options=SERVER_OPTIONS, interceptors=[CallInterceptor(metrics, admit=gate)]
    )
    roles_pb2_grpc.add_RolesServiceServicer_to_server(RolesServicer(runtime.roles), admin)
    flows = runtime.flows
    rotation = RotationServicer(
        rotation=flows.rotation, revocation=flows.revocation, root=flows.root
    )
    rotation_pb2_grpc.add_RotationServiceServicer_to_server(rotation, admin)
    clusters_pb2_grpc.add_ClustersServiceServicer_to_server(
        ClustersServicer(runtime.clusters), admin
    )
    access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(runtime.access), admin)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(runtime.reading), admin)
    leases_pb2_grpc.add_LeasesServiceServicer_to_server(LeasesServicer(runtime.listing), admin)
    services = [
        ROLES_SERVICE,
        ROTATION_SERVICE,
        CLUSTERS_SERVICE,
        ACCESS_SERVICE,
        AUDIT_SERVICE,
        LEASES_SERVICE,
    ]
    credentials = grpc.ssl_server_credentials(
        [(listener.tls_key.read_bytes(), listener.tls_cert.read_bytes())],
        root_certificates=listener.client_ca.read_bytes(),
        require_client_auth=True,
    )
    address = f"{listener.host}:{listener.port}"
    try:
        port = admin.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise InvalidRequest(
            "admin.port", f"cannot listen on {address}: {exc}; pick a free port"
        ) from exc
    return admin, port, (_health(admin, services), services)


def workload_options(listener: WorkloadListener) -> list[tuple[str, int]]:
    """The workload server's gRPC options: connection limits and the receive limit."""
    return [
        *SERVER_OPTIONS,
        *CONNECTION_OPTIONS,
        ("grpc.max_receive_message_length", listener.max_message_bytes),
    ]


def _health(
    server: grpc.aio.Server, services: list[str], *, reflect: bool = True
) -> health_aio.HealthServicer:
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflect:
        names = [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return health
