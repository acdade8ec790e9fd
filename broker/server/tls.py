"""The workload listener's TLS identity: the configured one, or a self-signed one for development.

A generated identity is kept in the data directory (tls.crt, tls.key, mode 0600) and reused
on the next start, so agents that pinned it keep working. Its names are localhost,
127.0.0.1, the host name and the listener's own address when it listens on one (a bridge
address pods reach the host by); production deployments give their own certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.settings import WorkloadListener

GENERATED_DIR = "workload-tls"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    generated: bool

    def pem_pair(self) -> tuple[bytes, bytes]:
        """(private key, certificate chain) as grpc.ssl_server_credentials wants them."""
        return self.key_path.read_bytes(), self.cert_path.read_bytes()


def workload_identity(listener: WorkloadListener, data_dir: Path) -> TlsIdentity:
    if listener.tls_cert is not None and listener.tls_key is not None:
        return TlsIdentity(listener.tls_cert, listener.tls_key, generated=False)
    folder = data_dir / GENERATED_DIR
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    if not (cert_path.is_file() and key_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem, cert_pem = self_signed(addresses=_listener_address(listener.host))
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem)
    return TlsIdentity(cert_path, key_path, generated=True)


def self_signed(
    now: dt.datetime | None = None, addresses: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """A P-256 key and a self-signed certificate for localhost, 127.0.0.1, this host and
    `addresses`."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyferry-broker (self-signed)")])
    hosts = sorted({"localhost", socket.gethostname()})
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    ips = sorted(
        {ipaddress.ip_address("127.0.0.1"), *map(ipaddress.ip_address, addresses)}, key=str
    )
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _listener_address(host: str) -> tuple[str, ...]:
    """The listener's address when it is one address (not a wildcard, not a name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()
    return () if address.is_unspecified else (str(address),)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
