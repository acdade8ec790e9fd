"""The contract's names, numbers and enums, in a module that imports only the standard library.

`injector.contract` re-exports all of this beside the spec's pydantic models, which the
webhook writes. The agent (`keyferry agent run`, a process in every injected pod) imports
this module and `injector.agent.spec` instead, and so never loads pydantic: its memory
budget is docs/benchmarks.md's (issue 19).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

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
FILE_MODE_MAX: Final = 0o777
SPEC_MAX_BYTES: Final = 128 * 1024
"""The longest spec the agent reads: Linux's limit on one environment string (a spec the
webhook writes is a few kilobytes, the broker's CA most of it)."""

BACKOFF_BASE_SECONDS: Final = 1.0
BACKOFF_CAP_SECONDS: Final = 30.0
"""The agent's retry backoff (full jitter): the first ceiling, doubling up to the cap. The cap
also bounds the gRPC channel's own reconnect backoff."""
BACKOFF_MAX_SECONDS: Final = 3600.0


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
RESTART_COALESCE_MAX: Final = 60.0
RESTART_MIN_SPACING_SECONDS: Final = 660.0
"""Two restarts of a pod's containers are at least this far apart. The kubelet delays a
container's restart (CrashLoopBackOff, 10 s doubling to 300 s) unless its previous restart is
more than twice the 300 s cap ago; 600 s plus a minute's margin never meets that back-off."""
RESTART_MIN_SPACING_MAX: Final = 3600.0

CONTAINER_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""A Kubernetes container name (an RFC 1123 label)."""


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
