"""The admin listener's PKI for bed brokers, and mutual-TLS channels to it as an operator.

Every broker of the integration tests gets its own admin CA (`<folder>/admin-ca`, made with
the same code as `keyferry admin init`) and two operators: SECURITY (group `security`) and
PLATFORM (group `platform`), which the example policy set treats differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from broker.identity.admin_pki import OPERATORS, create_ca
from broker.settings import BrokerSettings

SECURITY, PLATFORM = "sam-security", "pat-platform"
HOSTS = ["localhost", "127.0.0.1"]


def admin_section(folder: Path) -> dict[str, Any]:
    """A new admin CA, serving certificate and operators in `folder`; the config section."""
    ca = create_ca(folder)
    server = ca.issue_server(HOSTS)
    ca.issue_operator(SECURITY, ["security"])
    ca.issue_operator(PLATFORM, ["platform"])
    return {
        "host": "127.0.0.1",
        "port": 0,
        "tls_cert": str(server.cert_path),
        "tls_key": str(server.key_path),
        "client_ca": str(ca.cert_path),
    }


def operator_credentials(settings: BrokerSettings, operator: str) -> grpc.ChannelCredentials:
    ca = settings.admin.client_ca
    assert ca is not None, "this broker serves no admin listener"
    folder = ca.parent / OPERATORS
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=(folder / f"{operator}.key").read_bytes(),
        certificate_chain=(folder / f"{operator}.crt").read_bytes(),
    )


@asynccontextmanager
async def admin_channel(
    settings: BrokerSettings, port: int | None, operator: str = SECURITY
) -> AsyncIterator[grpc.aio.Channel]:
    """A mutual-TLS channel to the broker's admin listener as `operator`."""
    assert port is not None, "this broker serves no admin listener"
    credentials = operator_credentials(settings, operator)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        yield channel
