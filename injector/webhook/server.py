"""The HTTPS server around `mutate`: it decodes AdmissionReview v1, calls `mutate`, encodes.

Standard library only (asyncio + ssl): the webhook answers one small JSON POST per pod
creation, so the image needs no web framework. Every bound is in `server.limits`
(ServerLimits), because with `failurePolicy: Fail` a webhook that stops answering stops
pod creation in every namespace it serves:

- reading a request (TLS handshake, request line, headers, body) costs an open socket and
  a coroutine, no thread, and must finish within one deadline from accept
  (`request_seconds`), so a slow client (slowloris) only holds its own connection;
- at most `max_connections` are open at once. When one more arrives, the oldest connection
  that has sent nothing yet is closed to make room, else the oldest still sending its
  request (a real client speaks at once and is read in milliseconds, so these are silent
  or slow clients); only when every open connection is being answered is the new one
  closed instead. TLS starts once the client has sent its first bytes, so a silent
  connection costs a socket and a task, not TLS state;
- a body above `max_body_bytes` is refused (413) before it is read, and bodies above
  LARGE_BODY_BYTES are read LARGE_BODY_SLOTS at a time, so memory stays bounded however
  many clients send large bodies;
- complete requests are decoded, mutated and encoded by a fixed pool of `workers` threads.

One request per connection (`Connection: close`), as the API server's client handles.

    POST /mutate    AdmissionReview v1 in, AdmissionReview v1 out
    GET  /healthz   200 "ok" while serving

`keyferry webhook serve` reloads its certificate when the files change (certs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import structlog
from pydantic import ValidationError

from .certs import ReloadingContext, server_context
from .config import ServerLimits, WebhookConfig
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
LINE_BYTES = 8 * 1024
"""Longest request line or header line read (the API server's are well under 1 KiB)."""
MAX_HEADERS = 64
BACKLOG = 1024
LARGE_BODY_BYTES = 64 * 1024
"""A body above this (a real review is a few KiB to tens of KiB) waits for a large-body slot."""
LARGE_BODY_SLOTS = 8
ACCEPT_RETRY_SECONDS = 0.1
REFUSAL_LOG_SECONDS = 60.0
"""Refused connections are logged at most once per this many seconds, with their count."""

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
    body_bytes: int = 0
    """The AdmissionReview's size as received (server.limits.max_body_bytes bounds it)."""


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


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: bytes


@dataclass(frozen=True)
class _Reply:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain"


class _Refused(Exception):
    """A request refused before it reached a worker; answered with `reply`."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.reply = _Reply(status, message.encode())


async def _read_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    max_body: int,
    large_bodies: asyncio.Semaphore,
) -> _Request | None:
    """One HTTP/1.x request; None when the client closed before sending one."""
    line = await reader.readline()
    if not line.strip():
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(HTTPStatus.BAD_REQUEST, "not an HTTP/1 request line")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readline()
        if not line.strip():
            break
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise _Refused(HTTPStatus.BAD_REQUEST, "a header line without ':'")
        headers[name.strip().lower()] = value.strip()
    else:
        raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header lines")
    path = target.split("?")[0]
    if method != "POST":
        return _Request(method, path, b"")
    if "transfer-encoding" in headers:
        raise _Refused(HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length")
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        length = -1
    if not 0 < length <= max_body:
        raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "bad body length")
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if length <= LARGE_BODY_BYTES:
        return _Request(method, path, await reader.readexactly(length))
    async with large_bodies:
        return _Request(method, path, await reader.readexactly(length))


async def _readable(sock: socket.socket) -> None:
    """Wait until the client has sent something (its TLS ClientHello), reading nothing."""
    try:
        if sock.recv(1, socket.MSG_PEEK):
            return  # already there: a real client speaks at once
    except BlockingIOError:
        pass
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _encode(reply: _Reply) -> bytes:
    head = (
        f"HTTP/1.1 {reply.status.value} {reply.status.phrase}\r\n"
        "Server: keyferry-webhook\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + reply.body


class WebhookServer:
    """The webhook on host:port (port 0: a free one); `start` returns the bound port. It
    serves on its own thread's event loop; `limits` defaults to the config's server.limits."""

    def __init__(
        self,
        config: WebhookConfig,
        context: ssl.SSLContext | ReloadingContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        observe: Observer | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._contexts: Contexts = (
            context.current if isinstance(context, ReloadingContext) else lambda: context
        )
        self._config = config
        self._observe = observe
        if limits is None:
            limits = config.server.limits if config.server is not None else ServerLimits()
        self.limits = limits
        self._socket = socket.create_server((host, port), backlog=BACKLOG)
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="keyferry-webhook")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._open: set[asyncio.Task[None]] = set()
        # Connections whose request is not read yet, oldest first: those that have not
        # sent a byte yet, and those that have. Eviction takes the oldest silent one first.
        self._silent: dict[asyncio.Task[None], None] = {}
        self._reading: dict[asyncio.Task[None], None] = {}
        self._large_bodies: asyncio.Semaphore | None = None
        self.refused_connections = 0
        """Connections closed at accept: every open one was being answered (for tests)."""
        self.evicted_connections = 0
        """Unfinished requests closed to make room for a new connection (for tests)."""
        self._crowding_logged = (0.0, 0)
        self._failed: Exception | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self) -> int:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="keyferry-webhook", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._failed is not None:
            raise self._failed
        return self.port

    def stop(self) -> None:
        """Stop accepting, let in-flight admissions finish their response, close the socket."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join()
        self._socket.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(ready))
        except Exception as exc:  # handed to start(), which raises it
            self._failed = exc
        finally:
            ready.set()
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._large_bodies = asyncio.Semaphore(LARGE_BODY_SLOTS)
        self._socket.setblocking(False)
        accepting = asyncio.create_task(self._accept())
        ready.set()
        try:
            await self._stop.wait()
        finally:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
            self._socket.close()
            if self._open:
                # In-flight requests finish (each within its deadline), then anything left goes.
                await asyncio.wait(self._open, timeout=self.limits.request_seconds)
            for task in list(self._open):
                task.cancel()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _address = await loop.sock_accept(self._socket)
            except OSError as exc:  # out of file descriptors: let some connections end
                log.warning("webhook could not accept a connection", error=str(exc))
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if len(self._open) >= self.limits.max_connections and not self._make_room():
                sock.close()
                continue
            task = asyncio.create_task(self._connection(sock))
            self._open.add(task)
            self._silent[task] = None
            # sock_accept does not yield while connections are queued: let the new one see
            # whether its client has spoken before more arrive (and maybe evict it).
            await asyncio.sleep(0)

    async def _connection(self, sock: socket.socket) -> None:
        task = cast("asyncio.Task[None]", asyncio.current_task())
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(self.limits.request_seconds):
                # Until the client speaks, a connection costs its socket and this task: TLS
                # state (asyncio keeps a 256 KiB buffer per TLS connection) comes after.
                await _readable(sock)
                del self._silent[task]
                self._reading[task] = None
                loop = asyncio.get_running_loop()
                reader = asyncio.StreamReader(limit=LINE_BYTES)
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self._contexts()
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                await self._exchange(reader, writer, task)
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
            pass  # a slow, silent or broken client (or a port scan) is not ours to log
        except asyncio.CancelledError:
            if self._stop is not None and self._stop.is_set():
                raise  # stopping; an evicted connection just ends
        finally:
            self._open.discard(task)
            self._silent.pop(task, None)
            self._reading.pop(task, None)
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            sock.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        """Read the request and answer it, within the connection's deadline."""
        large_bodies = cast(asyncio.Semaphore, self._large_bodies)  # made before serving
        try:
            request = await _read_request(reader, writer, self.limits.max_body_bytes, large_bodies)
        except _Refused as refused:
            reply = refused.reply
        else:
            if request is None:
                return
            self._reading.pop(task, None)  # read: no longer a candidate for eviction
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._pool, self._answer, request)
        self._reading.pop(task, None)
        writer.write(_encode(reply))
        await writer.drain()

    def _make_room(self) -> bool:
        """Close the oldest connection that has sent nothing yet, else the oldest still
        sending its request; False when there is none (every open connection is being
        answered), and the new one is refused."""
        waiting = self._silent if self._silent else self._reading
        oldest = next(iter(waiting), None)
        if oldest is not None:
            del waiting[oldest]
            self._open.discard(oldest)  # its room is the new connection's from now on
            oldest.cancel()
            self.evicted_connections += 1
        else:
            self.refused_connections += 1
        at, count = self._crowding_logged
        crowded = self.evicted_connections + self.refused_connections
        now = time.monotonic()
        if now - at >= REFUSAL_LOG_SECONDS:
            log.warning(
                "webhook crowded: server.limits.max_connections are open",
                evicted=self.evicted_connections,
                refused=self.refused_connections,
                since_last=crowded - count,
                max_connections=self.limits.max_connections,
            )
            self._crowding_logged = (now, crowded)
        return oldest is not None

    def _answer(self, request: _Request) -> _Reply:
        """On a worker thread: route, then decode, mutate, encode and log an admission."""
        route = (request.method, request.path)
        if route == ("GET", HEALTH_PATH):
            return _Reply(HTTPStatus.OK, b"ok")
        if request.method not in {"GET", "POST"}:
            return _Reply(HTTPStatus.NOT_IMPLEMENTED, b"unsupported method")
        if route != ("POST", MUTATE_PATH):
            return _Reply(HTTPStatus.NOT_FOUND, b"not found")
        return self._admit(request.body)

    def _admit(self, body: bytes) -> _Reply:
        started = time.perf_counter()
        try:
            review = AdmissionReview.model_validate_json(body)
        except ValidationError as exc:
            message = f"not an AdmissionReview v1: {exc.error_count()} problem(s)"
            return _Reply(HTTPStatus.BAD_REQUEST, message.encode())
        admission_request = review.request
        if admission_request is None:
            return _Reply(HTTPStatus.BAD_REQUEST, b"an AdmissionReview without a request")
        response = mutate(admission_request, self._config)
        encoded = AdmissionReview(response=response).encode()
        seconds = time.perf_counter() - started
        self._record(
            Admission(
                uid=admission_request.uid,
                namespace=admission_request.namespace,
                name=pod_name(admission_request),
                allowed=response.allowed,
                patched=response.patch is not None,
                dry_run=admission_request.dry_run,
                seconds=seconds,
                body_bytes=len(body),
            ),
            response,
        )
        return _Reply(HTTPStatus.OK, encoded, "application/json")

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
            bytes=admission.body_bytes,
            refusal=response.status.message if response.status else None,
        )
        if self._observe is not None:
            self._observe(admission)


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
