"""A rogue member cluster's API server: a small local HTTPS server (the attacker of the
tests that use it) that accepts any credential, announces its own issuer, answers its JWKS
endpoint with what the test gives it, and reports the pods the test says it runs. Shared
by the registry attacks and the cross-cluster isolation attack (tests/security)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from injector.webhook.server import server_context
from tests.bed.pki import new_ca
from tests.bed.ports import LOOPBACK

ROGUE_ISSUER = "https://rogue.example.invalid"
WATCH_SECONDS = 1.0  # a watch call ends empty after this; the broker's watch resumes


def pod_object(namespace: str, name: str, uid: str) -> dict[str, Any]:
    """A running pod as the API server returns it (the fields the broker reads)."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"},
        "status": {"phase": "Running"},
    }


class RogueApiServer:
    """The rogue API server; `pods` (pod_object's) are listed, watched (no events) and read.
    `stop` and `restart` take it down and back up on the same port (a member cluster's
    outage)."""

    def __init__(self, folder: Path, jwks: bytes, pods: Sequence[Mapping[str, Any]] = ()) -> None:
        ca = new_ca(folder, "rogue-ca", "rogue API server CA")
        serving = ca.issue(folder, "rogue", "rogue-apiserver", ip_addresses=(LOOPBACK,))
        self.ca_pem = ca.pem().decode()
        pod_list = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": list(pods),
        }
        documents = {
            "/.well-known/openid-configuration": json.dumps(
                {"issuer": ROGUE_ISSUER, "jwks_uri": f"{ROGUE_ISSUER}/openid/v1/jwks"}
            ).encode(),
            "/openid/v1/jwks": jwks,
            "/api/v1/pods": json.dumps(pod_list).encode(),
        }
        for pod in pods:
            meta = pod["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            documents[path] = json.dumps(pod).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if parse_qs(url.query).get("watch", [""])[0].lower() == "true":
                    time.sleep(WATCH_SECONDS)  # a watch with nothing to report
                    body: bytes | None = b""
                else:
                    body = documents.get(url.path)
                status = HTTPStatus.OK if body is not None else HTTPStatus.NOT_FOUND
                body = body if body is not None else b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._handler = Handler
        self._context = server_context(serving.cert, serving.key)
        self._http = self._listen(0)
        self.server = f"https://{LOOPBACK}:{self._http.server_address[1]}"
        self._running = False

    def _listen(self, port: int) -> ThreadingHTTPServer:
        http = ThreadingHTTPServer((LOOPBACK, port), self._handler)
        http.socket = self._context.wrap_socket(http.socket, server_side=True)
        return http

    def __enter__(self) -> RogueApiServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._running = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: its port refuses connections until `restart`."""
        if self._running:
            self._http.shutdown()
            self._http.server_close()
            self._running = False

    def restart(self) -> None:
        """Answer again, on the same port."""
        self._http = self._listen(int(self._http.server_address[1]))
        self.__enter__()
