"""The HTTPS server around `mutate`: it decodes AdmissionReview v1, calls `mutate`, encodes.

Standard library only (http.server + ssl): the webhook answers one small JSON POST per pod
creation, so a thread per connection is plenty and the image needs no web framework. The
TLS handshake runs in the connection's own thread, under a timeout, so a slow or silent
client cannot stall the others.

    POST /mutate    AdmissionReview v1 in, AdmissionReview v1 out
    GET  /healthz   200 "ok" while serving

`keyferry webhook serve` reloads its certificate when the files change (certs.py).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import structlog
from pydantic import ValidationError

from .certs import ReloadingContext, server_context
from .config import WebhookConfig
from .errors import InvalidConfig
from .mutate import mutate
from .review import AdmissionRequest, AdmissionResponse, AdmissionReview

__all__ = [
    "HEALTH_PATH",
    "MUTATE_PATH",
    "Admission",
    "Observer",
    "WebhookServer",
    "serve",
    "server_context",  # from certs.py, where it moved; still importable from here
]

MUTATE_PATH = "/mutate"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 4 * 1024 * 1024
"""Above the API server's own 3 MiB request limit: a real review always fits."""
CONNECTION_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.1
"""How often the accept loop checks for `stop`; bounds how long stopping takes."""

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Admission:
    """What one admission did and how long the webhook took (decode, mutate, encode)."""

    uid: str
    namespace: str | None
    name: str | None
    allowed: bool
    patched: bool
    dry_run: bool
    seconds: float


Observer = Callable[[Admission], None]


Contexts = Callable[[], ssl.SSLContext]
"""Where each handshake gets its SSLContext: a fixed one, or `ReloadingContext.current`."""


def pod_name(request: AdmissionRequest) -> str | None:
    """The pod's name for the admission log: its name, else its generateName prefix. The
    object is whatever the caller sent: anything but a string there counts as no name."""
    if request.name:
        return request.name
    metadata = (request.object or {}).get("metadata")
    prefix = metadata.get("generateName") if isinstance(metadata, dict) else None
    return prefix if isinstance(prefix, str) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        contexts: Contexts,
        config: WebhookConfig,
        observe: Observer | None,
    ) -> None:
        super().__init__(address, _Handler)
        self.contexts = contexts
        self.config = config
        self.observe = observe

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        sock.settimeout(CONNECTION_TIMEOUT_SECONDS)
        try:
            tls = self.contexts().wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a failed handshake (a port scan, a client without our CA) is not ours to log
        try:
            _Handler(tls, client_address, self)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "keyferry-webhook"
    sys_version = ""
    timeout = CONNECTION_TIMEOUT_SECONDS

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def do_GET(self) -> None:
        if self.path.split("?")[0] == HEALTH_PATH:
            self._send(HTTPStatus.OK, b"ok", "text/plain")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"bad body length", "text/plain")
            return
        body = self.rfile.read(length)
        if self.path.split("?")[0] != MUTATE_PATH:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
            return
        started = time.perf_counter()
        try:
            review = AdmissionReview.model_validate_json(body)
        except ValidationError as exc:
            message = f"not an AdmissionReview v1: {exc.error_count()} problem(s)"
            self._send(HTTPStatus.BAD_REQUEST, message.encode(), "text/plain")
            return
        request = review.request
        if request is None:
            self._send(
                HTTPStatus.BAD_REQUEST, b"an AdmissionReview without a request", "text/plain"
            )
            return
        response = mutate(request, self._server.config)
        encoded = AdmissionReview(response=response).encode()
        seconds = time.perf_counter() - started
        self._send(HTTPStatus.OK, encoded, "application/json")
        self._record(
            Admission(
                uid=request.uid,
                namespace=request.namespace,
                name=pod_name(request),
                allowed=response.allowed,
                patched=response.patch is not None,
                dry_run=request.dry_run,
                seconds=seconds,
            ),
            response,
        )

    def _record(self, admission: Admission, response: AdmissionResponse) -> None:
        log.info(
            "admission",
            uid=admission.uid,
            namespace=admission.namespace,
            pod=admission.name,
            allowed=admission.allowed,
            patched=admission.patched,
            dry_run=admission.dry_run,
            ms=round(admission.seconds * 1000, 3),
            refusal=response.status.message if response.status else None,
        )
        if self._server.observe is not None:
            self._server.observe(admission)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every admission is logged once, structured, by _record


class WebhookServer:
    """The webhook on host:port (port 0: a free one); `start` returns the bound port."""

    def __init__(
        self,
        config: WebhookConfig,
        context: ssl.SSLContext | ReloadingContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        observe: Observer | None = None,
    ) -> None:
        contexts: Contexts = (
            context.current if isinstance(context, ReloadingContext) else lambda: context
        )
        self._server = _Server((host, port), contexts, config, observe)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> int:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name="keyferry-webhook",
            daemon=True,
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop accepting, let in-flight admissions finish their response, close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()


def serve(config: WebhookConfig, stop: threading.Event) -> None:
    """Serve until `stop` is set (the CLI sets it on SIGTERM or SIGINT)."""
    if config.server is None:
        raise InvalidConfig("server: `keyferry webhook serve` needs server.cert_file and key_file")
    context = ReloadingContext(config.server.cert_file, config.server.key_file)
    server = WebhookServer(config, context, host=config.server.host, port=config.server.port)
    port = server.start()
    log.info("webhook serving", host=config.server.host, port=port, cluster=config.cluster_name)
    try:
        stop.wait()
    finally:
        server.stop()
        log.info("webhook stopped")
