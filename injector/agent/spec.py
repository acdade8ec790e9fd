"""The agent spec, read once from `KEYFERRY_AGENT_SPEC` and validated, without pydantic.

The webhook writes the spec with the pydantic models of `injector.contract`; the agent reads
it back here, into frozen dataclasses of the same fields, by the same rules (the models'
patterns, bounds and defaults, extra fields refused), so that the agent's process loads no
pydantic (about 12 MiB of its resident memory: docs/benchmarks.md, issue 19).
tests/unit/test_agent_spec.py feeds both the same documents and holds them to the same
verdicts and the same field names. An error names the variable, the field's path
(`credentials.0.name`) and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from broker.names import ROLE_NAME_PATTERN
from injector.terms import (
    AGENT_SPEC_ENV,
    AGENT_SPEC_VERSION,
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    BACKOFF_MAX_SECONDS,
    CONTAINER_NAME_PATTERN,
    CREDENTIAL_NAME_MAX,
    CREDENTIAL_NAME_RE,
    FILE_MODE,
    FILE_MODE_MAX,
    RESTART_COALESCE_MAX,
    RESTART_COALESCE_SECONDS,
    RESTART_GRACE_MAX,
    RESTART_GRACE_SECONDS,
    RESTART_MIN_SPACING_MAX,
    RESTART_MIN_SPACING_SECONDS,
    SPEC_MAX_BYTES,
    FileFormat,
    Mode,
    Signal,
    check_backoff,
)

from .errors import SpecError

_ROLE_RE = re.compile(ROLE_NAME_PATTERN)
_CONTAINER_RE = re.compile(CONTAINER_NAME_PATTERN)
_E = TypeVar("_E", bound=StrEnum)


@dataclass(frozen=True)
class RestartSpec:
    """`on-rotate: restart`: which app containers the agent restarts after a rotation, and
    how (SIGTERM, SIGKILL after `grace_seconds`; rotations coalesced, restarts spaced)."""

    containers: tuple[str, ...]
    grace_seconds: int = RESTART_GRACE_SECONDS
    coalesce_seconds: float = RESTART_COALESCE_SECONDS
    min_spacing_seconds: float = RESTART_MIN_SPACING_SECONDS


@dataclass(frozen=True)
class CredentialRequest:
    """One credential: the file `name` in the volume, issued for the keyferry role `role`."""

    name: str
    role: str
    format: FileFormat | None = None
    """None: the default of the role's backend, chosen once the agent knows the backend."""


@dataclass(frozen=True)
class AgentSpec:
    """Everything the agent needs, as the webhook put it into `KEYFERRY_AGENT_SPEC`."""

    mode: Mode
    cluster: str
    broker_address: str
    directory: str
    token_path: str
    credentials: tuple[CredentialRequest, ...]
    version: int = AGENT_SPEC_VERSION
    broker_ca_pem: str | None = None
    """The CA that signed the broker's workload listener; None: the system trust store."""
    file_mode: int = FILE_MODE
    on_rotate: Signal | None = None
    restart: RestartSpec | None = None
    backoff_base_seconds: float = BACKOFF_BASE_SECONDS
    backoff_cap_seconds: float = BACKOFF_CAP_SECONDS


class _Invalid(Exception):
    """One field is wrong: its path and the reason, made into a SpecError by `parse_spec`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def load_spec(environ: Mapping[str, str]) -> AgentSpec:
    """The validated spec; SpecError naming the variable and the first bad field."""
    raw = environ.get(AGENT_SPEC_ENV)
    if not raw:
        raise SpecError(f"{AGENT_SPEC_ENV} is not set; the keyferry webhook sets it in the pod")
    return parse_spec(raw)


def parse_spec(raw: str) -> AgentSpec:
    """The spec in `raw` (the variable's JSON); SpecError naming the first bad field."""
    if len(raw) > SPEC_MAX_BYTES:
        raise SpecError(
            f"{AGENT_SPEC_ENV} is invalid at (the document): longer than {SPEC_MAX_BYTES} "
            "characters; the webhook writes a few kilobytes"
        )
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise SpecError(f"{AGENT_SPEC_ENV} is invalid at (the document): not JSON: {exc}") from exc
    try:
        return _spec(document)
    except _Invalid as exc:
        raise SpecError(f"{AGENT_SPEC_ENV} is invalid at {exc.where}: {exc.reason}") from None


def _spec(document: object) -> AgentSpec:
    # In the models' field order, extra fields after them: the error named is the one
    # pydantic would name first.
    fields = _Fields(document, "(the document)")
    version = fields.get("version", AGENT_SPEC_VERSION)
    if version != AGENT_SPEC_VERSION or isinstance(version, bool):
        raise _Invalid("version", f"Input should be {AGENT_SPEC_VERSION}")
    mode = _enum(Mode, fields.get("mode"), "mode")
    cluster = _text(fields.get("cluster"), "cluster")
    broker_address = _text(fields.get("broker_address"), "broker_address")
    broker_ca_pem = _optional_text(fields.get("broker_ca_pem", None), "broker_ca_pem")
    directory = _absolute(fields.get("directory"), "directory")
    token_path = _absolute(fields.get("token_path"), "token_path")
    file_mode = _integer(fields.get("file_mode", FILE_MODE), "file_mode", 0, FILE_MODE_MAX)
    credentials = tuple(
        _credential(item, f"credentials.{index}")
        for index, item in enumerate(_list(fields.get("credentials"), "credentials"))
    )
    on_rotate = fields.get("on_rotate", None)
    restart = fields.get("restart", None)
    spec = AgentSpec(
        version=AGENT_SPEC_VERSION,
        mode=mode,
        cluster=cluster,
        broker_address=broker_address,
        broker_ca_pem=broker_ca_pem,
        directory=directory,
        token_path=token_path,
        file_mode=file_mode,
        credentials=credentials,
        on_rotate=None if on_rotate is None else _enum(Signal, on_rotate, "on_rotate"),
        restart=None if restart is None else _restart(restart, "restart"),
        backoff_base_seconds=_number(
            fields.get("backoff_base_seconds", BACKOFF_BASE_SECONDS),
            "backoff_base_seconds",
            above=0,
            at_most=BACKOFF_MAX_SECONDS,
        ),
        backoff_cap_seconds=_number(
            fields.get("backoff_cap_seconds", BACKOFF_CAP_SECONDS),
            "backoff_cap_seconds",
            above=0,
            at_most=BACKOFF_MAX_SECONDS,
        ),
    )
    fields.no_others()
    try:
        check_backoff(spec.backoff_base_seconds, spec.backoff_cap_seconds)
    except ValueError as exc:
        raise _Invalid("(the document)", str(exc)) from None
    if spec.restart is not None and spec.on_rotate is not None:
        raise _Invalid("(the document)", "on_rotate and restart are two rotation actions: set one")
    return spec


def _credential(item: object, where: str) -> CredentialRequest:
    fields = _Fields(item, where)
    name = _text(fields.get("name"), f"{where}.name")
    if len(name) > CREDENTIAL_NAME_MAX:
        raise _Invalid(
            f"{where}.name", f"String should have at most {CREDENTIAL_NAME_MAX} characters"
        )
    if not CREDENTIAL_NAME_RE.fullmatch(name):
        raise _Invalid(
            f"{where}.name", f"String should match pattern '{CREDENTIAL_NAME_RE.pattern}'"
        )
    role = _text(fields.get("role"), f"{where}.role")
    if not _ROLE_RE.fullmatch(role):
        raise _Invalid(f"{where}.role", f"String should match pattern '{ROLE_NAME_PATTERN}'")
    chosen = fields.get("format", None)
    fields.no_others()
    return CredentialRequest(
        name=name,
        role=role,
        format=None if chosen is None else _enum(FileFormat, chosen, f"{where}.format"),
    )


def _restart(item: object, where: str) -> RestartSpec:
    fields = _Fields(item, where)
    names = _list(fields.get("containers"), f"{where}.containers")
    containers: list[str] = []
    for index, entry in enumerate(names):
        at = f"{where}.containers.{index}"
        name = _text(entry, at, empty=True)
        if not _CONTAINER_RE.fullmatch(name):
            raise _Invalid(at, f"String should match pattern '{CONTAINER_NAME_PATTERN}'")
        containers.append(name)
    grace = fields.get("grace_seconds", RESTART_GRACE_SECONDS)
    restart = RestartSpec(
        containers=tuple(containers),
        grace_seconds=_integer(grace, f"{where}.grace_seconds", 1, RESTART_GRACE_MAX),
        coalesce_seconds=_number(
            fields.get("coalesce_seconds", RESTART_COALESCE_SECONDS),
            f"{where}.coalesce_seconds",
            above=0,
            at_most=RESTART_COALESCE_MAX,
        ),
        min_spacing_seconds=_number(
            fields.get("min_spacing_seconds", RESTART_MIN_SPACING_SECONDS),
            f"{where}.min_spacing_seconds",
            at_least=0,
            at_most=RESTART_MIN_SPACING_MAX,
        ),
    )
    fields.no_others()
    return restart


_REQUIRED = object()


class _Fields:
    """A JSON object's fields, taken one by one; `no_others` refuses any not taken."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(where, "Input should be an object")
        self._value: dict[str, object] = value
        self._root = "" if where == "(the document)" else f"{where}."
        self._taken: set[str] = set()

    def get(self, name: str, default: object = _REQUIRED) -> object:
        """The field's value, `default` when absent; "Field required" without a default."""
        self._taken.add(name)
        if name in self._value:
            return self._value[name]
        if default is _REQUIRED:
            raise _Invalid(f"{self._root}{name}", "Field required")
        return default

    def no_others(self) -> None:
        for key in self._value:
            if key not in self._taken:
                raise _Invalid(f"{self._root}{key}", "Extra inputs are not permitted")


# --- one JSON value each -------------------------------------------------------------------


def _text(value: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Invalid(where, "Input should be a valid string")
    if not value and not empty:
        raise _Invalid(where, "String should have at least 1 character")
    return value


def _optional_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where, empty=True)


def _absolute(value: object, where: str) -> str:
    text = _text(value, where, empty=True)
    if not text.startswith("/"):
        raise _Invalid(where, "String should match pattern '^/' (an absolute path)")
    return text


def _list(value: object, where: str) -> list[object]:
    if value is None:
        raise _Invalid(where, "Field required")
    if not isinstance(value, list):
        raise _Invalid(where, "Input should be a valid list")
    if not value:
        raise _Invalid(where, "List should have at least 1 item after validation, not 0")
    return value


def _enum(kind: type[_E], value: object, where: str) -> _E:
    members = {member.value: member for member in kind}
    if isinstance(value, str) and value in members:
        return members[value]
    allowed = ", ".join(f"'{name}'" for name in members)
    raise _Invalid(where, f"Input should be one of {allowed}")


def _integer(value: object, where: str, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise _Invalid(where, "Input should be a valid integer")
    if not least <= value <= most:
        raise _Invalid(where, f"Input should be between {least} and {most}")
    return int(value)


def _number(
    value: object,
    where: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(where, "Input should be a valid number")
    number = float(value)
    if above is not None and not number > above:
        raise _Invalid(where, f"Input should be greater than {above:g}")
    if at_least is not None and not number >= at_least:
        raise _Invalid(where, f"Input should be greater than or equal to {at_least:g}")
    if not number <= at_most:
        raise _Invalid(where, f"Input should be less than or equal to {at_most:g}")
    return number
