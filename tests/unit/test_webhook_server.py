"""The webhook's HTTPS server, config file and CLI, on loopback (no cluster needed)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from injector.webhook.certs import server_context
from injector.webhook.config import (
    DEFAULT_MAX_BODY_BYTES,
    ServerLimits,
    WebhookConfig,
    load_config,
)
from injector.webhook.errors import InvalidConfig
from injector.webhook.registration import registration
from injector.webhook.server import Admission, WebhookServer
from tests.bed.pki import CA, KeyPair, new_ca
from tests.bed.ports import free_port

from .samples import WEBHOOK_CONFIG_YAML


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, KeyPair]:
    folder = tmp_path_factory.mktemp("webhook-pki")
    ca = new_ca(folder, "ca", "webhook test CA")
    return ca, ca.issue(folder, "serving", "webhook", ip_addresses=("127.0.0.1",))


@pytest.fixture
def config_file(tmp_path: Path, pki: tuple[CA, KeyPair]) -> Path:
    ca, serving = pki
    (tmp_path / "tls.crt").write_bytes(serving.cert.read_bytes())
    (tmp_path / "tls.key").write_bytes(serving.key.read_bytes())
    (tmp_path / "broker-ca.pem").write_bytes(ca.pem())
    path = tmp_path / "webhook.yaml"
    path.write_text(WEBHOOK_CONFIG_YAML.format(port=free_port()))
    return path


@pytest.fixture
def server(config_file: Path) -> Iterator[tuple[WebhookServer, list[Admission]]]:
    config = load_config(config_file)
    assert config.server is not None
    seen: list[Admission] = []
    context = server_context(config.server.cert_file, config.server.key_file)
    running = WebhookServer(config, context, observe=seen.append)
    running.start()
    yield running, seen
    running.stop()


def call(port: int, ca: CA, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def review(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "someone"},
            "object": {
                "metadata": {"name": "p", "annotations": annotations},
                "spec": {
                    "securityContext": {"runAsUser": 1000},
                    "containers": [{"name": "app", "image": "app:1"}],
                },
            },
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def test_round_trip(server: tuple[WebhookServer, list[Admission]], pki: tuple[CA, KeyPair]) -> None:
    running, seen = server
    ca, _ = pki
    body = json.dumps(
        review({"keyferry.io/inject": "true", "keyferry.io/role.db": "orders-db-ro"})
    ).encode()
    status, answer = call(running.port, ca, "POST", "/mutate", body)
    assert status == 200
    decoded = json.loads(answer)
    assert decoded["apiVersion"] == "admission.k8s.io/v1"
    assert decoded["kind"] == "AdmissionReview"
    assert decoded["response"]["uid"] == "abc"
    assert decoded["response"]["allowed"] is True
    assert decoded["response"]["patchType"] == "JSONPatch"
    assert "status" not in decoded["response"]  # None fields are left out
    assert seen[-1].patched
    assert seen[-1].seconds < 1


def test_refusal_is_encoded_with_status(
    server: tuple[WebhookServer, list[Admission]], pki: tuple[CA, KeyPair]
) -> None:
    running, _ = server
    body = json.dumps(review({"keyferry.io/inject": "maybe"})).encode()
    status, answer = call(running.port, pki[0], "POST", "/mutate", body)
    assert status == 200
    response = json.loads(answer)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "annotation keyferry.io/inject" in response["status"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/healthz", None, 200),
        ("GET", "/nothing", None, 404),
        ("POST", "/other", b"{}", 404),
        ("POST", "/mutate", b"not json", 400),
        ("POST", "/mutate", b'{"apiVersion": "admission.k8s.io/v1beta1"}', 400),
        (
            "POST",
            "/mutate",
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            400,
        ),
    ],
)
def test_http_edges(
    server: tuple[WebhookServer, list[Admission]],
    pki: tuple[CA, KeyPair],
    method: str,
    path: str,
    body: bytes | None,
    expected: int,
) -> None:
    status, _ = call(server[0].port, pki[0], method, path, body)
    assert status == expected


def test_config_resolves_files_next_to_it(config_file: Path, pki: tuple[CA, KeyPair]) -> None:
    config = load_config(config_file)
    assert config.broker.ca_pem == pki[0].pem().decode()
    assert config.server is not None
    assert config.server.cert_file == config_file.parent / "tls.crt"
    assert config.audience == "keyferry:east"
    assert config.never_injected() == {"keyferry-system", "kube-system"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cluster_name: East\n", ["cluster_name", "agent: Field required"]),
        ("[unclosed", ["cannot read"]),
        (
            "cluster_name: a\nagent: {image: x}\nbroker: {address: 'b:1'}\n"
            "token_expiration_seconds: 60\n",
            ["token_expiration_seconds"],
        ),
        (
            "cluster_name: a\nagent: {image: x}\nbroker: {address: 'b:1', ca_file: nope.pem}\n",
            ["broker.ca_file", "nope.pem"],
        ),
        ("cluster_name: a\nagent: {image: x, colour: red}\nbroker: {address: 'b:1'}\n", ["colour"]),
        (
            "cluster_name: a\nagent: {image: x, backoff_base_seconds: 0}\n"
            "broker: {address: 'b:1'}\n",
            ["agent.backoff_base_seconds", "greater than 0"],
        ),
        (
            "cluster_name: a\nagent: {image: x, backoff_cap_seconds: 7200}\n"
            "broker: {address: 'b:1'}\n",
            ["agent.backoff_cap_seconds", "less than or equal to 3600"],
        ),
        (
            "cluster_name: a\nagent: {image: x, backoff_base_seconds: 5, backoff_cap_seconds: 2}\n"
            "broker: {address: 'b:1'}\n",
            ["agent: ", "backoff_cap_seconds (2) is below backoff_base_seconds (5)"],
        ),
    ],
)
def test_bad_config(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "webhook.yaml"
    path.write_text(text)
    with pytest.raises(InvalidConfig) as bad:
        load_config(path)
    for word in words:
        assert word in bad.value.message
    assert str(path) in bad.value.message


def test_registration_fields() -> None:
    config = WebhookConfig.model_validate(
        {
            "cluster_name": "east",
            "namespace": "kf",
            "excluded_namespaces": ["tooling"],
            "agent": {"image": "x"},
            "broker": {"address": "b:1"},
        }
    )
    document = registration("keyferry", "https://127.0.0.1:1/mutate", "Q0E=", config)
    (webhook,) = document["webhooks"]
    assert webhook["clientConfig"] == {"url": "https://127.0.0.1:1/mutate", "caBundle": "Q0E="}
    assert webhook["rules"][0]["operations"] == ["CREATE"]
    assert webhook["rules"][0]["resources"] == ["pods"]
    assert webhook["sideEffects"] == "None"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kf", "kube-system", "tooling"],
        }
    ]


def test_cli_help_has_an_example() -> None:
    result = CliRunner().invoke(app, ["webhook", "serve", "--help"])
    assert result.exit_code == 0
    assert "keyferry webhook serve --config" in result.output
    assert "webhook" in CliRunner().invoke(app, ["--help"]).output


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "webhook.yaml"
    path.write_text("cluster_name: a\n")
    result = CliRunner().invoke(app, ["webhook", "serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "agent" in result.output


def test_cli_serves_until_sigterm(config_file: Path, pki: tuple[CA, KeyPair]) -> None:
    config = load_config(config_file)
    assert config.server is not None
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from broker.cli.main import main; main()",
            "webhook",
            "serve",
            "--config",
            str(config_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = call(config.server.port, pki[0], "GET", "/healthz")
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "the webhook never listened"
                time.sleep(0.1)
        assert (status, body) == (200, b"ok")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
        assert b"webhook stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- bounds: what one client can cost the webhook ----------------------------------------------


@pytest.fixture
def bounded(config_file: Path) -> Iterator[WebhookServer]:
    """The server with small bounds: 4 connections, a 1 s deadline, the default body cap."""
    config = load_config(config_file)
    assert config.server is not None
    context = server_context(config.server.cert_file, config.server.key_file)
    limits = ServerLimits(max_connections=4, request_seconds=1.0)
    running = WebhookServer(config, context, limits=limits)
    running.start()
    yield running
    running.stop()


def tls_socket(port: int, ca: CA) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed the connection (read gives EOF or a reset), waiting at most
    the socket's own timeout."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_a_body_above_the_cap_is_refused_before_it_is_read(
    bounded: WebhookServer, pki: tuple[CA, KeyPair]
) -> None:
    with tls_socket(bounded.port, pki[0]) as sock:
        length = DEFAULT_MAX_BODY_BYTES + 1
        sock.sendall(f"POST /mutate HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = sock.recv(4096)  # nothing of the body was sent
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_slow_client_is_cut_at_the_deadline_however_it_trickles(
    bounded: WebhookServer, pki: tuple[CA, KeyPair]
) -> None:
    """A byte every 0.2 s would pass any per-read timeout; the whole-request deadline
    (1 s here) closes the connection anyway."""
    with tls_socket(bounded.port, pki[0]) as sock:
        header = b"POST /mutate HTTP/1.1\r\nX-Slow: " + b"a" * 200
        sent = 0
        try:
            for byte in header:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        assert sent < len(header)  # cut before the client finished trickling
        assert closed_by_server(sock)


def test_past_the_connection_cap_the_oldest_unfinished_request_makes_room(
    bounded: WebhookServer, pki: tuple[CA, KeyPair]
) -> None:
    """Silent connections fill the cap (4); a real admission still gets through, and the
    oldest silent connection is the one closed."""
    silent = [socket.create_connection(("127.0.0.1", bounded.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)  # accepted, so counted
        body = json.dumps(review({"keyferry.io/inject": "true"})).encode()
        status, _ = call(bounded.port, pki[0], "POST", "/mutate", body)
        assert status == 200
        assert bounded.evicted_connections >= 1
        assert closed_by_server(silent[0])
        # No thread per connection: the event loop's and at most `workers` more.
        threads = [t for t in threading.enumerate() if t.name.startswith("keyferry-webhook")]
        assert len(threads) <= 1 + bounded.limits.workers
    finally:
        for sock in silent:
            sock.close()
