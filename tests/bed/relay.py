"""A TCP relay from the node network's address to a server on 127.0.0.1, in threads.

For a host server that binds one address and that pods must reach: cluster b's API server
(its serving certificate names the node network's address too, see kube.py). Bytes are
copied as they are (TLS passes through); the relay lives as long as its `with` block.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from types import TracebackType

from .ports import LOOPBACK

CHUNK = 65536


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        with socket.create_connection((LOOPBACK, self.server.target_port), timeout=10) as up:
            up.settimeout(None)
            back = threading.Thread(target=_pump, args=(up, self.request), daemon=True)
            back.start()
            _pump(self.request, up)
            back.join()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], target_port: int) -> None:
        self.target_port = target_port
        super().__init__(address, _Handler)


def _pump(source: socket.socket, dest: socket.socket) -> None:
    with contextlib.suppress(OSError):  # either side gone: the connection is over
        while data := source.recv(CHUNK):
            dest.sendall(data)
    with contextlib.suppress(OSError):
        dest.shutdown(socket.SHUT_WR)


class Relay:
    """Listens on (`host`, a free port) and forwards each connection to 127.0.0.1:`target_port`."""

    def __init__(self, host: str, target_port: int) -> None:
        self._server = _Server((host, 0), target_port)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
