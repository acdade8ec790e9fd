"""The pod annotations keyferry reads: every key is one constant here, the user-facing contract.

Annotations are parsed once, strictly, into an `InjectionSpec`; nothing downstream reads a
raw annotation string. Any `keyferry.io/*` key not listed here refuses the pod, so a typo
(`keyferry.io/rol.db`) is an error at `kubectl apply`, not a pod that silently lacks a file.

No annotation chooses a broker address, an image, a URL, a path or a template: those come
from the webhook's own configuration. The only name an annotation gives is a credential's
file name, and that is a single safe path component inside the keyferry volume.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from broker.names import ROLE_NAME_PATTERN
from injector.contract import (
    CONTAINER_NAME_PATTERN,
    CREDENTIAL_NAME_MAX,
    CREDENTIAL_NAME_RE,
    RESTART_GRACE_MAX,
    RESTART_GRACE_SECONDS,
    CredentialRequest,
    FileFormat,
    Mode,
    Signal,
)

from .errors import InvalidAnnotation

PREFIX = "keyferry.io/"

INJECT = "keyferry.io/inject"
"""`"true"`: inject the agent and the credential volume. `"false"` or absent: no injection."""

ROLE_PREFIX = "keyferry.io/role."
"""`keyferry.io/role.<name>: <role>`: one credential, issued for keyferry role `<role>` and
written to the file `<name>` in the keyferry volume. At least one per injected pod."""

FORMAT_PREFIX = "keyferry.io/format."
"""`keyferry.io/format.<name>: env|json|dsn|pgpass|aws-credentials|pem`: how the file
`<name>` is rendered. Absent: the default of the role's backend."""

ON_ROTATE = "keyferry.io/on-rotate"
"""`none` (default), `signal:<SIG>` (e.g. `signal:SIGHUP`) or `restart`: what the agent does
to the app after it swapped a rotated file. Both need `spec.shareProcessNamespace: true`;
`restart` also a pod the kubelet restarts (restartPolicy Always)."""

RESTART_CONTAINERS = "keyferry.io/restart-containers"
"""`on-rotate: restart` only: the app containers to restart, comma-separated (`app,worker`).
Absent: every app container (`spec.containers`) the pod has when keyferry admits it."""

RESTART_GRACE = "keyferry.io/restart-grace-seconds"
"""`on-rotate: restart` only: seconds between SIGTERM and SIGKILL, 1-300 (default 30)."""

MODE = "keyferry.io/mode"
"""`sidecar` (default: files are kept fresh and rotated) or `init-only` (written once)."""

KEYS = (INJECT, ON_ROTATE, MODE, RESTART_CONTAINERS, RESTART_GRACE)
PREFIXES = (ROLE_PREFIX, FORMAT_PREFIX)

MAX_VALUE_LENGTH = 253
MAX_CREDENTIALS = 16
ON_ROTATE_NONE = "none"
SIGNAL_PREFIX = "signal:"
ON_ROTATE_RESTART = "restart"

_ROLE_RE = re.compile(ROLE_NAME_PATTERN)
_CONTAINER_RE = re.compile(CONTAINER_NAME_PATTERN)
_EXAMPLE_ROLE = f"{ROLE_PREFIX}orders-db: orders-db-ro"


class RestartRequest(BaseModel):
    """`on-rotate: restart` as the annotations ask for it; the webhook checks the names
    against the pod (annotations alone cannot)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    containers: tuple[str, ...] | None = None
    """None: every app container of the pod."""
    grace_seconds: int = RESTART_GRACE_SECONDS


class InjectionSpec(BaseModel):
    """What a pod's annotations ask for, validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Mode.SIDECAR
    credentials: tuple[CredentialRequest, ...] = Field(min_length=1, max_length=MAX_CREDENTIALS)
    on_rotate: Signal | None = None
    restart: RestartRequest | None = None
    """Set for `on-rotate: restart`; then `on_rotate` is None."""


def keyferry_keys(annotations: Mapping[str, str]) -> list[str]:
    return sorted(key for key in annotations if key.startswith(PREFIX))


def parse_annotations(annotations: Mapping[str, str]) -> InjectionSpec | None:
    """The pod's `InjectionSpec`, or None when it does not ask for injection.

    Raises `InvalidAnnotation` naming the first wrong key (in sorted order) and its fix.
    """
    mine = {key: annotations[key] for key in keyferry_keys(annotations)}
    for key, value in mine.items():
        _check_known(key)
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidAnnotation(
                key,
                f"the value is {len(value)} characters long",
                f"keyferry values are at most {MAX_VALUE_LENGTH} characters",
            )
    if not _inject(mine.get(INJECT)):
        return None
    roles = {k.removeprefix(ROLE_PREFIX): v for k, v in mine.items() if k.startswith(ROLE_PREFIX)}
    formats = {
        k.removeprefix(FORMAT_PREFIX): v for k, v in mine.items() if k.startswith(FORMAT_PREFIX)
    }
    if not roles:
        raise InvalidAnnotation(
            INJECT,
            'is "true" but no credential is asked for',
            f"add one {ROLE_PREFIX}<name> annotation per credential, e.g. {_EXAMPLE_ROLE}",
        )
    if len(roles) > MAX_CREDENTIALS:
        raise InvalidAnnotation(
            f"{ROLE_PREFIX}*",
            f"{len(roles)} credentials are asked for",
            f"a pod may ask for at most {MAX_CREDENTIALS}",
        )
    for name in sorted(formats.keys() - roles.keys()):
        raise InvalidAnnotation(
            FORMAT_PREFIX + name,
            f"there is no credential named {name!r}",
            f"add {ROLE_PREFIX}{name}: <role>, or remove this annotation",
        )
    credentials = tuple(
        CredentialRequest(
            name=_credential_name(ROLE_PREFIX + name, name),
            role=_role(ROLE_PREFIX + name, role),
            format=_format(formats.get(name), name),
        )
        for name, role in sorted(roles.items())
    )
    action = _on_rotate(mine.get(ON_ROTATE))
    if action != ON_ROTATE_RESTART:
        _no_restart_keys(mine)
    return InjectionSpec(
        mode=_mode(mine.get(MODE)),
        credentials=credentials,
        on_rotate=action if isinstance(action, Signal) else None,
        restart=_restart(mine) if action == ON_ROTATE_RESTART else None,
    )


def _check_known(key: str) -> None:
    if key in KEYS or any(key.startswith(p) for p in PREFIXES):
        return
    known = ", ".join([*KEYS, *(p + "<name>" for p in PREFIXES)])
    raise InvalidAnnotation(
        key, "is not a keyferry annotation", f"remove it or use one of: {known}"
    )


def _inject(value: str | None) -> bool:
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise InvalidAnnotation(INJECT, f"{value!r} is not a valid value", 'write "true" or "false"')


def _credential_name(key: str, name: str) -> str:
    if "/" in name or "\\" in name:
        problem = f"the credential name {name!r} contains a path separator"
    elif name.strip(".") == "":
        problem = f"the credential name {name!r} is not a file name"
    elif len(name) > CREDENTIAL_NAME_MAX:
        problem = f"the credential name is {len(name)} characters long"
    elif not CREDENTIAL_NAME_RE.fullmatch(name):
        problem = f"the credential name {name!r} is not a safe file name"
    else:
        return name
    raise InvalidAnnotation(
        key,
        problem,
        f"the name after {ROLE_PREFIX!r} becomes the file name: use 1-{CREDENTIAL_NAME_MAX} "
        "lowercase letters, digits and '-', starting and ending with a letter or digit, "
        f"e.g. {_EXAMPLE_ROLE}",
    )


def _role(key: str, role: str) -> str:
    if _ROLE_RE.fullmatch(role):
        return role
    raise InvalidAnnotation(
        key,
        f"{role!r} is not a keyferry role name",
        "write the name of a role from the broker's catalog (`keyferry roles list`): "
        "1-63 lowercase letters, digits and '-'",
    )


def _format(value: str | None, name: str) -> FileFormat | None:
    if value is None:
        return None
    try:
        return FileFormat(value)
    except ValueError:
        raise InvalidAnnotation(
            FORMAT_PREFIX + name,
            f"{value!r} is not a file format",
            f"write one of: {', '.join(f.value for f in FileFormat)}",
        ) from None


def _mode(value: str | None) -> Mode:
    if value is None:
        return Mode.SIDECAR
    try:
        return Mode(value)
    except ValueError:
        raise InvalidAnnotation(
            MODE, f"{value!r} is not a mode", f"write one of: {', '.join(m.value for m in Mode)}"
        ) from None


def _on_rotate(value: str | None) -> Signal | str | None:
    """None, a Signal, or ON_ROTATE_RESTART."""
    if value is None or value == ON_ROTATE_NONE:
        return None
    if value == ON_ROTATE_RESTART:
        return ON_ROTATE_RESTART
    if value.startswith(SIGNAL_PREFIX):
        try:
            return Signal(value.removeprefix(SIGNAL_PREFIX))
        except ValueError:
            pass
    signals = ", ".join(SIGNAL_PREFIX + s.value for s in Signal)
    raise InvalidAnnotation(
        ON_ROTATE,
        f"{value!r} is not a rotation action",
        f"write {ON_ROTATE_NONE}, {ON_ROTATE_RESTART} or one of: {signals}",
    )


def _restart(mine: Mapping[str, str]) -> RestartRequest:
    return RestartRequest(
        containers=_container_names(mine.get(RESTART_CONTAINERS)),
        grace_seconds=_grace(mine.get(RESTART_GRACE)),
    )


def _no_restart_keys(mine: Mapping[str, str]) -> None:
    """The restart annotations mean nothing without `on-rotate: restart`: refused, not
    ignored, so a pod never believes it is restarted when it is not."""
    for key in (RESTART_CONTAINERS, RESTART_GRACE):
        if key in mine:
            raise InvalidAnnotation(
                key,
                f"is only read with {ON_ROTATE}: {ON_ROTATE_RESTART}",
                f"add {ON_ROTATE}: {ON_ROTATE_RESTART}, or remove this annotation",
            )


def _container_names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",")]
    for name in names:
        if not _CONTAINER_RE.fullmatch(name):
            raise InvalidAnnotation(
                RESTART_CONTAINERS,
                f"{name!r} is not a container name",
                "write the names of the pod's app containers separated by commas, e.g. app,worker",
            )
    if len(set(names)) != len(names):
        raise InvalidAnnotation(
            RESTART_CONTAINERS, "a container is named twice", "name each container once"
        )
    return tuple(names)


def _grace(value: str | None) -> int:
    if value is None:
        return RESTART_GRACE_SECONDS
    if value.isdigit() and 1 <= int(value) <= RESTART_GRACE_MAX:
        return int(value)
    raise InvalidAnnotation(
        RESTART_GRACE,
        f"{value!r} is not a number of seconds from 1 to {RESTART_GRACE_MAX}",
        f'write whole seconds between SIGTERM and SIGKILL, e.g. "{RESTART_GRACE_SECONDS}"',
    )
