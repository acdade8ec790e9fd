"""The serving certificate is reloaded from its files without a restart: `keyferry webhook
serve` as a process, its files replaced the way a Secret volume does it (a `..data`
symlink swapped at once) and the way a hand copy does it (one file, then the other); new
handshakes get the new certificate, a pair that does not load leaves the old one serving."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from injector.webhook.certs import ReloadingContext
from tests.bed.pki import CA, KeyPair, new_ca
from tests.bed.ports import free_port

from .samples import WEBHOOK_CONFIG_YAML

LOOPBACK = "127.0.0.1"
PYTHON_CLI = (sys.executable, "-c", "from broker.cli.main import main; main()")


def pair(folder: Path, name: str) -> tuple[CA, KeyPair]:
    ca = new_ca(folder, f"{name}-ca", f"webhook {name} CA")
    return ca, ca.issue(folder, f"{name}-serving", "webhook", ip_addresses=(LOOPBACK,))


def served(port: int, ca: CA) -> x509.Certificate:
    """The certificate a new TLS handshake gets, verified against `ca` (SSLError if not)."""
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def eventually_served(port: int, ca: CA, process: subprocess.Popen[bytes]) -> x509.Certificate:
    deadline = time.monotonic() + 20
    while True:
        try:
            return served(port, ca)
        except (OSError, ssl.SSLError):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "never served with that CA"
            time.sleep(0.1)


def link_pair(folder: Path, data: Path) -> None:
    """A Secret volume's layout: tls.crt -> ..data/tls.crt, ..data a symlink swapped at once."""
    temp = folder / "..data_tmp"
    temp.symlink_to(data.name)
    temp.replace(folder / "..data")


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int, CA]]:
    first_ca, first = pair(tmp_path, "first")
    version = tmp_path / "v1"
    version.mkdir()
    (version / "tls.crt").write_bytes(first.cert.read_bytes())
    (version / "tls.key").write_bytes(first.key.read_bytes())
    link_pair(tmp_path, version)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    (tmp_path / "broker-ca.pem").write_bytes(first_ca.pem())
    port = free_port()
    config = tmp_path / "webhook.yaml"
    config.write_text(WEBHOOK_CONFIG_YAML.format(port=port))
    process = subprocess.Popen(
        [*PYTHON_CLI, "webhook", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        eventually_served(port, first_ca, process)
        yield process, tmp_path, port, first_ca
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


def test_a_swapped_secret_volume_is_served_at_the_next_handshake(
    webhook: tuple[subprocess.Popen[bytes], Path, int, CA],
) -> None:
    process, folder, port, first_ca = webhook
    second_ca, second = pair(folder, "second")
    version = folder / "v2"
    version.mkdir()
    (version / "tls.crt").write_bytes(second.cert.read_bytes())
    (version / "tls.key").write_bytes(second.key.read_bytes())
    link_pair(folder, version)

    certificate = served(port, second_ca)  # no wait: the very next handshake
    assert (
        certificate.serial_number
        == x509.load_pem_x509_certificate(second.cert.read_bytes()).serial_number
    )
    assert process.poll() is None, "restarted"
    with pytest.raises(ssl.SSLError):
        served(port, first_ca)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    assert b"webhook certificate reloaded" in output


def test_a_half_written_pair_keeps_the_old_certificate_until_the_pair_loads(
    tmp_path: Path,
) -> None:
    _, first = pair(tmp_path, "first")
    _, second = pair(tmp_path, "second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    contexts = ReloadingContext(cert, key)
    before = contexts.current()
    assert contexts.current() is before  # unchanged files: the same context

    os.replace(_copy(second.cert, tmp_path / "new.crt"), cert)  # the certificate first...
    assert contexts.current() is before  # ...does not match the key: the old one stays
    assert contexts.reloads == 0
    os.replace(_copy(second.key, tmp_path / "new.key"), key)  # ...then the key
    after = contexts.current()
    assert after is not before
    assert contexts.reloads == 1
    assert contexts.current() is after


def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target
