"""The bed's TCP relay (tests/bed/relay.py): bytes both ways, each side's end passed on."""

from __future__ import annotations

import socket
import threading

from tests.bed.relay import Relay


def test_the_relay_copies_both_ways_and_passes_the_end_on() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        received: list[bytes] = []

        def upper_echo() -> None:
            connection, _ = server.accept()
            with connection:
                while data := connection.recv(1024):
                    received.append(data)
                    connection.sendall(data.upper())

        echo = threading.Thread(target=upper_echo, daemon=True)
        echo.start()
        with Relay("127.0.0.1", port) as relay:
            assert relay.port != port
            with socket.create_connection((relay.host, relay.port), timeout=10) as client:
                client.sendall(b"hello")
                assert client.recv(1024) == b"HELLO"
                client.shutdown(socket.SHUT_WR)
                assert client.recv(1024) == b""  # the server saw the end and closed
        echo.join(10)
    assert b"".join(received) == b"hello"
