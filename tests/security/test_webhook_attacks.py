"""Clients trying to take the admission webhook down while the API server keeps creating pods.

`keyferry webhook serve` runs as its own process with the default `server.limits`,
registered with cluster a's real API server for one opt-in namespace label. While hundreds
of silent connections, clients trickling their headers a byte at a time (slowloris) and
clients announcing or sending oversized bodies hammer it, annotated pods keep being created
through the API server and each is patched. The figures (pod creation latency without and
with the attack, the webhook's RSS, and the size of a large realistic AdmissionReview that
sized `max_body_bytes`) are printed; nothing asserts how fast anything was.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from injector.webhook.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    WebhookConfig,
)
from injector.webhook.registration import registration
from tests.bed.kube import KubeCluster
from tests.bed.pki import CA, new_ca
from tests.bed.ports import LOOPBACK, free_port
from tests.bench.served import rss_mib
from tests.scene.kube_helpers import admission, core, eventually, new_namespace
from tests.scene.webhook_harness import INJECT, agent_of, pod_body

pytestmark = pytest.mark.bed
KEYFERRY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "keyferry"
SILENT = DEFAULT_MAX_CONNECTIONS + 100  # more silent connections than the webhook keeps open
TRICKLING = 40
OVERSIZED_WORKERS = 4
PODS = 20


@dataclass
class RunningWebhook:
    process: subprocess.Popen[bytes]
    port: int
    ca: CA
    log: Path

    def admitted_bytes(self) -> list[int]:
        """The review size of every admission the webhook logged so far."""
        text = self.log.read_text(errors="replace")
        return [int(found) for found in re.findall(r"bytes[\"']?[=:] ?(\d+)", text)]


@pytest.fixture
def webhook(kube_clusters: dict[str, KubeCluster], tmp_path: Path) -> Iterator[RunningWebhook]:
    ca = new_ca(tmp_path, "ca", "keyferry webhook attack CA")
    serving = ca.issue(tmp_path, "serving", "keyferry-webhook", ip_addresses=(LOOPBACK,))
    port = free_port()
    config = {
        "cluster_name": "a",
        "namespace": f"keyferry-{secrets.token_hex(3)}",
        "agent": {"image": "keyferry/agent:test"},
        "broker": {"address": "127.0.0.1:9443"},
        "server": {
            "host": LOOPBACK,
            "port": port,
            "cert_file": str(serving.cert),
            "key_file": str(serving.key),
        },
    }
    path = tmp_path / "webhook.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(KEYFERRY), "webhook", "serve", "--config", str(path)], stdout=out, stderr=out
        )
    try:
        eventually(lambda: _listening(port, process, log), "the webhook listening")
        yield RunningWebhook(process, port, ca, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int, process: subprocess.Popen[bytes], log: Path) -> bool:
    assert process.poll() is None, log.read_text()
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def opted_in(
    webhook: RunningWebhook, kube_clusters: dict[str, KubeCluster]
) -> Iterator[tuple[KubeCluster, str]]:
    """The webhook registered with cluster a for one label, and a namespace carrying it,
    once the API server sends its pods."""
    cluster = kube_clusters["a"]
    run = secrets.token_hex(3)
    label = (f"keyferry.test/attack-{run}", "on")
    bundle = base64.b64encode(webhook.ca.pem()).decode()
    name = f"keyferry-attack-{run}"
    config = WebhookConfig.model_validate(
        {
            "cluster_name": "a",
            "agent": {"image": "keyferry/agent:test"},
            "broker": {"address": "127.0.0.1:9443"},
        }
    )
    document = registration(
        name, f"https://{LOOPBACK}:{webhook.port}/mutate", bundle, config, opt_in_label=label
    )
    with cluster.api_client() as api:
        admission(api).create_mutating_webhook_configuration(document)
        namespace = new_namespace(api, "attacked", labels=dict([label]))
    try:
        eventually(lambda: create(cluster, namespace)[1], "the webhook patching pods")
        yield cluster, namespace
    finally:
        with cluster.api_client() as api:
            admission(api).delete_mutating_webhook_configuration(name)


def create(
    cluster: KubeCluster, namespace: str, body: dict[str, Any] | None = None
) -> tuple[float, bool]:
    """Create an annotated pod through the API server: milliseconds, and whether it was patched."""
    with cluster.api_client() as api:
        started = time.perf_counter()
        raw = core(api).create_namespaced_pod(
            namespace, body or pod_body(annotations=INJECT), _preload_content=False
        )
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, agent_of(json.loads(raw.data)) is not None


def big_pod() -> dict[str, Any]:
    """A large realistic pod: 4 containers and 2 init containers, 60 environment variables
    and 12 mounts each, 20 volumes, and kubectl's last-applied annotation (a copy of it all)."""

    def container(name: str, probed: bool = True) -> dict[str, Any]:
        probes = {
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
        }
        return {
            "name": name,
            "image": f"registry.example/team/{name}:1.2.3@sha256:{'0' * 64}",
            "args": ["--config=/etc/app/config.yaml", "--log-level=info", "--port=8080"],
            "env": [
                {"name": f"SETTING_{i:02d}", "value": f"value-of-setting-{i:02d}-" + "x" * 40}
                for i in range(60)
            ],
            "volumeMounts": [
                {"name": f"vol-{i:02d}", "mountPath": f"/mnt/{name}/vol-{i:02d}"} for i in range(12)
            ],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
            **(probes if probed else {}),
        }

    body = pod_body(annotations=dict(INJECT))
    body["spec"]["containers"] = [container(f"app-{i}") for i in range(4)]
    body["spec"]["initContainers"] = [container(f"init-{i}", probed=False) for i in range(2)]
    body["spec"]["volumes"] = [{"name": f"vol-{i:02d}", "emptyDir": {}} for i in range(20)]
    body["metadata"]["labels"] = {f"team.example/label-{i}": f"value-{i}" for i in range(20)}
    applied = json.dumps(body)
    body["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = applied
    return body


class Attack:
    """Attackers on threads until `stop`; each counts what it did."""

    def __init__(self, port: int, ca: CA) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca.cert_path))
        self.stop = threading.Event()
        self.counts = {"silent": 0, "trickling": 0, "oversized": 0}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._silent, 1)
        self._spawn(self._trickle, TRICKLING)
        self._spawn(self._oversized, OVERSIZED_WORKERS)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def _spawn(self, target: Callable[[], None], count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._forever, args=(target,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _forever(self, attack: Callable[[], None]) -> None:
        while not self.stop.is_set():
            try:
                attack()
            except (OSError, ssl.SSLError):
                time.sleep(0.05)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _silent(self) -> None:
        """SILENT connections that never send a byte, replaced as the webhook closes them."""
        held: list[socket.socket] = []
        try:
            while not self.stop.is_set():
                held = [s for s in held if not _closed(s)]
                while len(held) < SILENT:
                    held.append(socket.create_connection((LOOPBACK, self.port), timeout=5))
                    self._count("silent")
                self.stop.wait(0.2)
        finally:
            for sock in held:
                sock.close()

    def _trickle(self) -> None:
        """A TLS client sending its headers one byte at a time, 0.3 s apart."""
        raw = socket.create_connection((LOOPBACK, self.port), timeout=5)
        with self.context.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
            self._count("trickling")
            for byte in b"POST /mutate HTTP/1.1\r\nContent-Length: 10\r\nX-Slow: " + b"a" * 1000:
                if self.stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                time.sleep(0.3)

    def _oversized(self) -> None:
        """A body announced at 100 MiB, then one really sent at 600 KiB."""
        for length, body in ((100 * 1024 * 1024, b""), (600 * 1024, b"{" * 600 * 1024)):
            raw = socket.create_connection((LOOPBACK, self.port), timeout=5)
            with self.context.wrap_socket(raw, server_hostname=LOOPBACK) as sock:
                head = f"POST /mutate HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode()
                sock.sendall(head + body)
                sock.recv(256)
                self._count("oversized")


def _closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def figure(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms, n={len(ordered)}"


def test_admissions_go_on_under_slow_silent_and_oversized_clients(
    webhook: RunningWebhook, opted_in: tuple[KubeCluster, str]
) -> None:
    cluster, namespace = opted_in
    quiet = [create(cluster, namespace) for _ in range(PODS)]
    big_ms, big_patched = create(cluster, namespace, big_pod())
    assert big_patched
    biggest = max(webhook.admitted_bytes())
    rss_before = rss_mib(webhook.process.pid)

    attack = Attack(webhook.port, webhook.ca)
    attack.start()
    try:
        time.sleep(2.0)  # the attackers are in place
        loud = [create(cluster, namespace) for _ in range(PODS)]
        rss_during = rss_mib(webhook.process.pid)
    finally:
        attack.join()

    print(f"largest real AdmissionReview: {biggest} bytes (big pod created in {big_ms:.0f} ms); "
          f"max_body_bytes {DEFAULT_MAX_BODY_BYTES}")  # fmt: skip
    print(f"pod creation without the attack: {figure([ms for ms, _ in quiet])}")
    print(f"pod creation during the attack:  {figure([ms for ms, _ in loud])}")
    print(f"attack: {attack.counts}")
    print(f"webhook RSS {rss_before:.0f} MiB before, {rss_during:.0f} MiB during the attack")
    assert all(patched for _, patched in quiet)
    assert all(patched for _, patched in loud), "an admission failed during the attack"
    assert attack.counts["silent"] > SILENT  # the webhook closed silent ones to make room
    assert attack.counts["oversized"] > 0
    assert biggest < DEFAULT_MAX_BODY_BYTES / 2  # the cap leaves room above real reviews
    assert rss_during - rss_before < 128
    assert webhook.process.poll() is None
