"""The workload listener's generated identity names the address it listens on."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from broker.server.tls import workload_identity
from broker.settings import WorkloadListener


def _addresses(listener: WorkloadListener, folder: Path) -> set[str]:
    identity = workload_identity(listener, folder)
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def test_a_listener_on_one_address_gets_it_in_the_generated_certificate(tmp_path: Path) -> None:
    listener = WorkloadListener(host="10.244.3.1", port=0)
    assert _addresses(listener, tmp_path) == {"127.0.0.1", "10.244.3.1"}


def test_a_wildcard_or_a_name_adds_no_address(tmp_path: Path) -> None:
    for number, host in enumerate(("0.0.0.0", "::", "broker.example")):  # noqa: S104
        assert _addresses(WorkloadListener(host=host, port=0), tmp_path / str(number)) == {
            str(ipaddress.ip_address("127.0.0.1"))
        }
