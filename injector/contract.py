"""The contract between the webhook and the in-pod agent: the command it runs and the spec it reads.

The webhook writes this into the agent container of every injected pod; the agent (and the
end-to-end harness, which runs the mutated pod's containers as local processes) reads it
back from there and nowhere else. Changing a field here is an API change for every pod
already running: bump `AGENT_SPEC_VERSION` and keep the agent reading the old version.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from broker.names import ROLE_NAME_PATTERN
from injector import probe

# The spec's variable, version and credential names: the probe (stdlib only) reads them too.
AGENT_SPEC_ENV: Final = probe.AGENT_SPEC_ENV
"""The environment variable holding the `AgentSpec` as JSON."""
AGENT_SPEC_VERSION: Final = probe.AGENT_SPEC_VERSION
CREDENTIAL_NAME_MAX: Final = probe.CREDENTIAL_NAME_MAX
CREDENTIAL_NAME_PATTERN: Final = probe.CREDENTIAL_NAME_PATTERN
CREDENTIAL_NAME_RE: Final = probe.CREDENTIAL_NAME_RE

AGENT_COMMAND = ("keyferry", "agent")
RUN_ARGS = ("run",)
"""`keyferry agent run`: issue every credential, write every file, then (sidecar mode) hold
the Watch stream until SIGTERM, or (init-only mode) exit 0."""
PROBE_COMMAND = ("python3", "-I", "-m", "injector.probe")
"""The sidecar's startup and readiness probes: exit 0 when every credential file of the spec
exists, 1 otherwise (`injector/probe.py`, the standard library only; `keyferry agent check`
runs the same check for people). `python3` is the agent image's virtualenv interpreter (first
on its PATH); `-I` keeps the pod's environment and working directory out of its imports."""

FILE_MODE = 0o440
"""Owner and group read; see docs/injector.md for who the owner and the group are."""

BACKOFF_BASE_SECONDS: Final = 1.0
BACKOFF_CAP_SECONDS: Final = 30.0
"""The agent's retry backoff (full jitter): the first ceiling, doubling up to the cap. The cap
also bounds the gRPC channel's own reconnect backoff."""
BACKOFF_MAX_SECONDS: Final = 3600.0

BackoffSeconds = Annotated[float, Field(gt=0, le=BACKOFF_MAX_SECONDS)]


def check_backoff(base: float, cap: float) -> None:
    """ValueError naming both fields when the cap is below the base."""
    if cap < base:
        raise ValueError(
            f"backoff_cap_seconds ({cap:g}) is below backoff_base_seconds ({base:g}); "
            "the cap must be at least the base"
        )


RESTART_MARKER_ENV = "KEYFERRY_CONTAINER"
"""`on-rotate: restart`: the webhook sets this variable to the container's own name in every
container the agent may restart. The agent, which has no Kubernetes API token, finds a
container's processes by this entry in `/proc/<pid>/environ` (docs/injector.md)."""
RESTART_GRACE_SECONDS: Final = 30
"""SIGTERM, then SIGKILL after this many seconds (`keyferry.io/restart-grace-seconds`)."""
RESTART_GRACE_MAX: Final = 300
RESTART_COALESCE_SECONDS: Final = 2.0
"""Rotations within this long of the first one are put in use by one restart."""
RESTART_MIN_SPACING_SECONDS: Final = 660.0
"""Two restarts of a pod's containers are at least this far apart. The kubelet delays a
container's restart (CrashLoopBackOff, 10 s doubling to 300 s) unless its previous restart is
more than twice the 300 s cap ago; 600 s plus a minute's margin never meets that back-off."""

CredentialName = Annotated[
    str, StringConstraints(pattern=CREDENTIAL_NAME_PATTERN, max_length=CREDENTIAL_NAME_MAX)
]
RoleName = Annotated[str, StringConstraints(pattern=ROLE_NAME_PATTERN)]


class Mode(StrEnum):
    SIDECAR = "sidecar"
    """A native sidecar (init container with restartPolicy Always): files rotate in place."""
    INIT_ONLY = "init-only"
    """A plain init container: files are written once, before the app starts, never rotated."""


class FileFormat(StrEnum):
    ENV = "env"
    JSON = "json"
    DSN = "dsn"
    PGPASS = "pgpass"
    AWS_CREDENTIALS = "aws-credentials"
    PEM = "pem"


class Signal(StrEnum):
    """Signals an app may ask for on rotation: none of them is annotation can ask for SIGKILL."""

    SIGHUP = "SIGHUP"
    SIGINT = "SIGINT"
    SIGQUIT = "SIGQUIT"
    SIGTERM = "SIGTERM"
    SIGUSR1 = "SIGUSR1"
    SIGUSR2 = "SIGUSR2"
    SIGWINCH = "SIGWINCH"


CONTAINER_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""A Kubernetes container name (an RFC 1123 label)."""
ContainerName = Annotated[str, StringConstraints(pattern=CONTAINER_NAME_PATTERN)]


class RestartSpec(BaseModel):
    """`on-rotate: restart`: which app containers the agent restarts after a rotation, and
    how (SIGTERM, SIGKILL after `grace_seconds`; rotations coalesced, restarts spaced)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    containers: tuple[ContainerName, ...] = Field(min_length=1)
    grace_seconds: int = Field(default=RESTART_GRACE_SECONDS, ge=1, le=RESTART_GRACE_MAX)
    coalesce_seconds: float = Field(default=RESTART_COALESCE_SECONDS, gt=0, le=60)
    min_spacing_seconds: float = Field(default=RESTART_MIN_SPACING_SECONDS, ge=0, le=3600)


class CredentialRequest(BaseModel):
    """One credential: the file `name` in the volume, issued for the keyferry role `role`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: CredentialName
    role: RoleName
    format: FileFormat | None = None
    """None: the default of the role's backend, chosen by the agent once it knows the backend."""


class AgentSpec(BaseModel):
    """Everything the agent needs, as the webhook put it into `KEYFERRY_AGENT_SPEC`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = AGENT_SPEC_VERSION
    mode: Mode
    cluster: str = Field(min_length=1)
    broker_address: str = Field(min_length=1)
    broker_ca_pem: str | None = None
    """The CA that signed the broker's workload listener; None: the system trust store."""
    directory: str = Field(pattern=r"^/")
    token_path: str = Field(pattern=r"^/")
    file_mode: int = FILE_MODE
    credentials: tuple[CredentialRequest, ...] = Field(min_length=1)
    on_rotate: Signal | None = None
    """None: no signal; the app re-reads its files itself."""
    restart: RestartSpec | None = None
    """Set for `on-rotate: restart` (then `on_rotate` is None). Absent from the JSON when None,
    so an agent older than this field still reads the spec of a pod that does not use it."""
    backoff_base_seconds: BackoffSeconds = BACKOFF_BASE_SECONDS
    backoff_cap_seconds: BackoffSeconds = BACKOFF_CAP_SECONDS
    """The retry backoff (the webhook's `agent.backoff_*_seconds`); absent in a spec written
    before they existed, which therefore gets the defaults."""

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> AgentSpec:
        check_backoff(self.backoff_base_seconds, self.backoff_cap_seconds)
        if self.restart is not None and self.on_rotate is not None:
            raise ValueError("on_rotate and restart are two rotation actions: set one")
        return self

    def to_json(self) -> str:
        """The JSON the webhook writes into `KEYFERRY_AGENT_SPEC`."""
        return self.model_dump_json(exclude={"restart"} if self.restart is None else None)
