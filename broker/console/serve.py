"""Serving the console: a socket bound on 127.0.0.1 at a port the system picks (or the one
asked for), uvicorn on it, and the URL with the one-time token for the operator."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from .admin import Target
from .app import create_app
from .security import Gate

LOOPBACK = "127.0.0.1"


def serve(target: Target, operator: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve until interrupted; `announce` gets the URL to open once the socket is bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    # Listening before the URL is announced: a browser that opens it at once is queued
    # until uvicorn accepts, not refused (a bound socket that does not listen refuses).
    sock.listen(64)
    gate = Gate(sock.getsockname()[1])
    app = create_app(target, gate, operator)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=64,
        timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    announce(gate.url)
    server.run(sockets=[sock])
