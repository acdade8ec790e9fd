"""The contract between the webhook and the in-pod agent: the command it runs and the spec it reads.

The webhook writes this into the agent container of every injected pod; the agent (and the
end-to-end harness, which runs the mutated pod's containers as local processes) reads it
back from there and nowhere else. Changing a field here is an API change for every pod
already running: bump `AGENT_SPEC_VERSION` and keep the agent reading the old version.

The names, numbers and enums live in `injector.terms` (the standard library only) and are
re-exported here; the agent reads the spec with `injector.agent.spec`, which mirrors these
models without pydantic (tests/unit/test_agent_spec.py holds the two to the same rules).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from broker.names import ROLE_NAME_PATTERN
from injector.terms import (
    AGENT_COMMAND,
    AGENT_SPEC_ENV,
    AGENT_SPEC_VERSION,
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    BACKOFF_MAX_SECONDS,
    CONTAINER_NAME_PATTERN,
    CREDENTIAL_NAME_MAX,
    CREDENTIAL_NAME_PATTERN,
    CREDENTIAL_NAME_RE,
    FILE_MODE,
    FILE_MODE_MAX,
    PROBE_COMMAND,
    RESTART_COALESCE_MAX,
    RESTART_COALESCE_SECONDS,
    RESTART_GRACE_MAX,
    RESTART_GRACE_SECONDS,
    RESTART_MARKER_ENV,
    RESTART_MIN_SPACING_MAX,
    RESTART_MIN_SPACING_SECONDS,
    RUN_ARGS,
    FileFormat,
    Mode,
    Signal,
    check_backoff,
)

__all__ = [
    "AGENT_COMMAND",
    "AGENT_SPEC_ENV",
    "AGENT_SPEC_VERSION",
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "CONTAINER_NAME_PATTERN",
    "CREDENTIAL_NAME_MAX",
    "CREDENTIAL_NAME_PATTERN",
    "CREDENTIAL_NAME_RE",
    "FILE_MODE",
    "FILE_MODE_MAX",
    "PROBE_COMMAND",
    "RESTART_COALESCE_MAX",
    "RESTART_COALESCE_SECONDS",
    "RESTART_GRACE_MAX",
    "RESTART_GRACE_SECONDS",
    "RESTART_MARKER_ENV",
    "RESTART_MIN_SPACING_MAX",
    "RESTART_MIN_SPACING_SECONDS",
    "RUN_ARGS",
    "AgentSpec",
    "BackoffSeconds",
    "ContainerName",
    "CredentialName",
    "CredentialRequest",
    "FileFormat",
    "Mode",
    "RestartSpec",
    "RoleName",
    "Signal",
    "check_backoff",
]

BackoffSeconds = Annotated[float, Field(gt=0, le=BACKOFF_MAX_SECONDS)]
CredentialName = Annotated[
    str, StringConstraints(pattern=CREDENTIAL_NAME_PATTERN, max_length=CREDENTIAL_NAME_MAX)
]
RoleName = Annotated[str, StringConstraints(pattern=ROLE_NAME_PATTERN)]
ContainerName = Annotated[str, StringConstraints(pattern=CONTAINER_NAME_PATTERN)]


class RestartSpec(BaseModel):
    """`on-rotate: restart`: which app containers the agent restarts after a rotation, and
    how (SIGTERM, SIGKILL after `grace_seconds`; rotations coalesced, restarts spaced)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    containers: tuple[ContainerName, ...] = Field(min_length=1)
    grace_seconds: int = Field(default=RESTART_GRACE_SECONDS, ge=1, le=RESTART_GRACE_MAX)
    coalesce_seconds: float = Field(default=RESTART_COALESCE_SECONDS, gt=0, le=RESTART_COALESCE_MAX)
    min_spacing_seconds: float = Field(
        default=RESTART_MIN_SPACING_SECONDS, ge=0, le=RESTART_MIN_SPACING_MAX
    )


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
    file_mode: int = Field(default=FILE_MODE, ge=0, le=FILE_MODE_MAX)
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
