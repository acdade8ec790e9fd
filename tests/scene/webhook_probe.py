"""A tiny mutating admission webhook for the smoke tests: HTTPS on 127.0.0.1, stdlib only.

It records every AdmissionReview the API servers send it, keyed by URL path (one path
per cluster), and answers each with a JSONPatch that adds one label, so a test can see
both that the API server called it and that the patch landed on the stored object.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.bed.pki import CA, new_ca
from tests.bed.ports import LOOPBACK

LABEL_KEY = "keyferry.test/webhook"
LABEL_VALUE = "patched"


@dataclass
class Seen:
    path: str
    review: dict[str, Any]


@dataclass
class WebhookProbe:
    ca: CA
    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"https://{LOOPBACK}:{self.port}{path}"

    def ca_bundle(self) -> str:
        """The CA as a MutatingWebhookConfiguration wants it: base64 of the PEM."""
        return base64.b64encode(self.ca.pem()).decode()

    def requests_on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s.review["request"] for s in self.seen if s.path == path]

    def record(self, path: str, review: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append(Seen(path, review))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def respond(review: dict[str, Any]) -> dict[str, Any]:
    request = review["request"]
    labels = (request.get("object") or {}).get("metadata", {}).get("labels")
    key = LABEL_KEY.replace("~", "~0").replace("/", "~1")
    patch = (
        [{"op": "add", "path": f"/metadata/labels/{key}", "value": LABEL_VALUE}]
        if labels
        else [{"op": "add", "path": "/metadata/labels", "value": {LABEL_KEY: LABEL_VALUE}}]
    )
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
        },
    }


def start_webhook_probe(folder: Path) -> WebhookProbe:
    ca = new_ca(folder, "webhook-ca", "keyferry-bed webhook probe CA")
    serving = ca.issue(folder, "webhook", "webhook-probe", ip_addresses=(LOOPBACK,))
    probe: WebhookProbe | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            review = json.loads(self.rfile.read(length))
            assert probe is not None
            probe.record(self.path.split("?")[0], review)
            body = json.dumps(respond(review)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test asserts on what was recorded

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(serving.cert), str(serving.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    probe = WebhookProbe(ca, server)
    threading.Thread(target=server.serve_forever, name="webhook-probe", daemon=True).start()
    return probe
