"""The agent's startup and readiness probe: exit 0 when every credential file of the spec exists.

The kubelet runs it as a fresh interpreter (`python3 -I -m injector.probe`, the contract's
`PROBE_COMMAND`) every second until the app starts and every few seconds for the pod's life,
inside the agent container's memory limit. So it imports the standard library and nothing
else, not even the rest of keyferry: no pydantic, no typer (which cost 0.6 CPU s a probe).
`injector.contract` takes the spec's variable, version and credential-name pattern from here.

It reads only the fields it tests (version, directory, credential names) and checks them as
`AgentSpec` does; `keyferry agent run` validates the whole spec. Exit codes: 0 every file
exists, 1 a file is missing, 2 the spec is missing or invalid (its reason on stderr).
"""

from __future__ import annotations

import json
import os
import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing alone would cost a probe a few milliseconds
    from collections.abc import Mapping
    from typing import Final

AGENT_SPEC_ENV: Final = "KEYFERRY_AGENT_SPEC"
"""The environment variable holding the `AgentSpec` as JSON."""
AGENT_SPEC_VERSION: Final = 1
CREDENTIAL_NAME_MAX: Final = 48
CREDENTIAL_NAME_PATTERN: Final = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
CREDENTIAL_NAME_RE: Final = re.compile(CREDENTIAL_NAME_PATTERN)

EXIT_OK, EXIT_MISSING, EXIT_SPEC = 0, 1, 2


class SpecInvalid(Exception):
    """The spec is missing, or one of the fields the probe reads is wrong."""


def credential_paths(environ: Mapping[str, str]) -> list[str]:
    """The path of every credential file the spec names; SpecInvalid saying why not."""
    raw = environ.get(AGENT_SPEC_ENV)
    if not raw:
        raise SpecInvalid(f"{AGENT_SPEC_ENV} is not set; the keyferry webhook sets it in the pod")
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise SpecInvalid(f"{AGENT_SPEC_ENV} is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise SpecInvalid(f"{AGENT_SPEC_ENV} is not a JSON object")
    if spec.get("version", AGENT_SPEC_VERSION) != AGENT_SPEC_VERSION:
        raise SpecInvalid(f"{AGENT_SPEC_ENV} has version {spec['version']!r}, not 1")
    directory = spec.get("directory")
    if not isinstance(directory, str) or not directory.startswith("/"):
        raise SpecInvalid(f"{AGENT_SPEC_ENV} is invalid at directory: not an absolute path")
    credentials = spec.get("credentials")
    if not isinstance(credentials, list) or not credentials:
        raise SpecInvalid(f"{AGENT_SPEC_ENV} is invalid at credentials: not a non-empty list")
    paths = []
    for index, credential in enumerate(credentials):
        name = credential.get("name") if isinstance(credential, dict) else None
        if (
            not isinstance(name, str)
            or len(name) > CREDENTIAL_NAME_MAX
            or not CREDENTIAL_NAME_RE.fullmatch(name)
        ):
            raise SpecInvalid(f"{AGENT_SPEC_ENV} is invalid at credentials.{index}.name")
        paths.append(os.path.join(directory, name))
    return paths


def check(environ: Mapping[str, str]) -> int:
    """0 when every credential file of the spec exists, 1 otherwise, 2 when the spec is bad."""
    try:
        paths = credential_paths(environ)
    except SpecInvalid as exc:
        print(f"keyferry probe: {exc}", file=sys.stderr)
        return EXIT_SPEC
    return EXIT_OK if all(os.path.isfile(path) for path in paths) else EXIT_MISSING


if __name__ == "__main__":
    sys.exit(check(os.environ))
