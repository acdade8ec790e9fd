"""The webhook's own configuration: everything a pod's annotations may not choose.

One YAML file, read once at start (`keyferry webhook serve --config FILE`), validated
strictly; `mutate` receives the resulting `WebhookConfig` as an argument, never a global.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from broker.models import validation_problems
from injector.contract import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    BackoffSeconds,
    check_backoff,
)

from .errors import InvalidConfig

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ABSOLUTE_PATH = r"^/[A-Za-z0-9._/-]*[A-Za-z0-9_-]$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|M|G)?$"

DEFAULT_MOUNT_PATH = "/keyferry/secrets"
DEFAULT_TOKEN_MOUNT_PATH = "/keyferry/token"  # noqa: S105 (a path, not a secret)
DEFAULT_TOKEN_EXPIRATION_SECONDS = 600
MIN_TOKEN_EXPIRATION_SECONDS = 600
"""The API server refuses projected tokens that live less than 10 minutes."""
MAX_TOKEN_EXPIRATION_SECONDS = 3600
DEFAULT_AGENT_UID = 65532
DEFAULT_STARTUP_TIMEOUT_SECONDS = 120
DEFAULT_PORT = 8443
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_WORKERS = 4
DEFAULT_MAX_BODY_BYTES = 512 * 1024
DEFAULT_REQUEST_SECONDS = 10.0
OTEL_NAME = r"^OTEL_[A-Z0-9_]{1,60}$"
MAX_AGENT_ENV = 16
MAX_AGENT_ENV_VALUE = 1024

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY)]
AbsolutePath = Annotated[str, StringConstraints(pattern=ABSOLUTE_PATH, max_length=255)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ResourceList(_Strict):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(_Strict):
    """The agent resources; the defaults follow the measurement in docs/injector.md (the
    agent about 64 MiB resident, plus one probe, `injector.probe`, at about 10 MiB)."""

    requests: ResourceList = ResourceList(cpu="10m", memory="64Mi")
    limits: ResourceList = ResourceList(memory="128Mi")


class AgentConfig(_Strict):
    image: str = Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")
    image_pull_policy: str = Field(default="IfNotPresent", pattern=r"^(Always|IfNotPresent|Never)$")
    run_as_user: int = Field(default=DEFAULT_AGENT_UID, ge=1)
    """The agent's UID when the app's own UID cannot be read from the pod (see docs/injector.md)."""
    resources: Resources = Resources()
    startup_timeout_seconds: int = Field(default=DEFAULT_STARTUP_TIMEOUT_SECONDS, ge=1, le=3600)
    backoff_base_seconds: BackoffSeconds = BACKOFF_BASE_SECONDS
    backoff_cap_seconds: BackoffSeconds = BACKOFF_CAP_SECONDS
    """The agent's retry backoff while the broker is away or at a cap: full jitter, the
    ceiling doubling from the base up to the cap (which also bounds gRPC's own reconnect
    backoff). Written into every agent spec."""
    env: dict[
        Annotated[str, StringConstraints(pattern=OTEL_NAME)],
        Annotated[str, StringConstraints(max_length=MAX_AGENT_ENV_VALUE)],
    ] = Field(default_factory=dict, max_length=MAX_AGENT_ENV)
    """Standard OpenTelemetry variables set in every agent container (OTEL_* names only, at
    most 16): OTEL_EXPORTER_OTLP_ENDPOINT turns the agent's traces on (broker.tracing).
    Never a secret: they are written into the pod spec in plain text."""

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> AgentConfig:
        check_backoff(self.backoff_base_seconds, self.backoff_cap_seconds)
        return self


class BrokerEndpoint(_Strict):
    address: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]-]+:[0-9]+$")
    """host:port of the broker's workload listener."""
    ca_file: Path | None = None
    """PEM file of the CA that signed the broker's certificate; `load_config` reads it into
    `ca_pem`. Neither: the agent uses the system trust store."""
    ca_pem: str | None = Field(default=None, max_length=65536)


class ServerLimits(_Strict):
    """What one client can cost the webhook (docs/security.md lists each bound)."""

    max_connections: int = Field(default=DEFAULT_MAX_CONNECTIONS, ge=1, le=10_000)
    """Connections open at once; one more is closed at accept, the others carry on."""
    workers: int = Field(default=DEFAULT_WORKERS, ge=1, le=64)
    """Threads that decode, mutate and encode complete requests (reading them costs none)."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=64 * 1024, le=3 * 1024 * 1024)
    """Largest AdmissionReview read (413 above it); fitted to real reviews (docs/injector.md)."""
    request_seconds: float = Field(default=DEFAULT_REQUEST_SECONDS, gt=0, le=60)
    """Deadline from accept to the whole request read (TLS handshake, headers, body)."""


class ServerConfig(_Strict):
    host: str = "0.0.0.0"  # noqa: S104 (the webhook pod is reached on its pod IP)
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    cert_file: Path
    key_file: Path
    limits: ServerLimits = ServerLimits()


class WebhookConfig(_Strict):
    cluster_name: str = Field(pattern=DNS_LABEL)
    """This cluster's name as registered with the broker; tokens get audience keyferry:<name>."""
    namespace: str = Field(default="keyferry", pattern=DNS_LABEL)
    """The webhook's own namespace: never injected, so the webhook can always restart itself."""
    excluded_namespaces: tuple[Annotated[str, StringConstraints(pattern=DNS_LABEL)], ...] = (
        "kube-system",
    )
    agent: AgentConfig
    broker: BrokerEndpoint
    mount_path: AbsolutePath = DEFAULT_MOUNT_PATH
    token_mount_path: AbsolutePath = DEFAULT_TOKEN_MOUNT_PATH
    token_expiration_seconds: int = Field(
        default=DEFAULT_TOKEN_EXPIRATION_SECONDS,
        ge=MIN_TOKEN_EXPIRATION_SECONDS,
        le=MAX_TOKEN_EXPIRATION_SECONDS,
    )
    server: ServerConfig | None = None
    """Where `keyferry webhook serve` listens; not needed by `mutate`."""

    @property
    def audience(self) -> str:
        return f"keyferry:{self.cluster_name}"

    def never_injected(self) -> frozenset[str]:
        return frozenset({self.namespace, *self.excluded_namespaces})


def load_config(path: Path) -> WebhookConfig:
    """Read and validate the YAML file; problems become one `InvalidConfig` naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidConfig(f"{path}: cannot read the webhook configuration: {exc}") from exc
    try:
        config = WebhookConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfig(f"{path}: {'; '.join(validation_problems(exc))}") from exc
    # Relative file names are relative to the configuration file.
    if config.server is not None:
        server = config.server.model_copy(
            update={
                "cert_file": path.parent / config.server.cert_file,
                "key_file": path.parent / config.server.key_file,
            }
        )
        config = config.model_copy(update={"server": server})
    ca_file = config.broker.ca_file
    if ca_file is None:
        return config
    # Read once at start, so a missing file fails start-up rather than every admission.
    try:
        pem = (path.parent / ca_file).read_text()
    except OSError as exc:
        raise InvalidConfig(f"{path}: broker.ca_file: cannot read {ca_file}: {exc}") from exc
    broker = config.broker.model_copy(update={"ca_pem": pem})
    return config.model_copy(update={"broker": broker})
