"""How the broker reaches a cluster registered at run time: URL, CA bundle and credential.

A registered cluster has no kubeconfig file; its connection is kept in the store and turned
into a kubernetes ApiClient here. The client library reads the CA and client certificate
from files only, so they are written to a private temporary folder that lives as long as
the client.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubernetes import client as k8s
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .config import NAME


class ClusterConnection(BaseModel):
    """A cluster's name and issuer, and how to reach its API server: exactly one of a
    bearer token or a client certificate and key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    issuer: str = Field(min_length=1)
    server: str = Field(pattern=r"^https://")
    ca_pem: str = Field(min_length=1)
    bearer_token: SecretStr | None = None
    cert_pem: str | None = None
    key_pem: SecretStr | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid cluster name: use a DNS label")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> ClusterConnection:
        certificate = self.cert_pem is not None and self.key_pem is not None
        if (self.bearer_token is not None) == certificate:
            raise ValueError("give either a bearer token or a client certificate and key")
        return self


def api_client(
    connection: ClusterConnection,
) -> tuple[k8s.ApiClient, tempfile.TemporaryDirectory[str]]:
    """An ApiClient for the connection, and the folder holding its PEM files (clean it up
    when the client closes)."""
    folder = tempfile.TemporaryDirectory(prefix=f"keyferry-{connection.name}-")
    root = Path(folder.name)
    configuration = k8s.Configuration()
    configuration.host = connection.server
    configuration.ssl_ca_cert = _private(root / "ca.crt", connection.ca_pem)
    if connection.bearer_token is not None:
        configuration.api_key = {"authorization": connection.bearer_token.get_secret_value()}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    if connection.cert_pem is not None and connection.key_pem is not None:
        configuration.cert_file = _private(root / "client.crt", connection.cert_pem)
        configuration.key_file = _private(
            root / "client.key", connection.key_pem.get_secret_value()
        )
    return k8s.ApiClient(configuration), folder


def _private(path: Path, text: str) -> str:
    path.touch(mode=0o600)
    path.write_text(text)
    return str(path)
