"""`keyferry agent run` and `keyferry agent check` without a command-line framework.

The console script (broker/cli/entry.py) calls `launch` with the arguments after `agent`.
These two commands, the only ones a pod runs, import nothing they do not use: `check` the
standard library only (`injector.probe`), `run` the agent with gRPC and the generated API,
never typer, click, rich, pydantic or structlog (tests/unit/test_agent_pieces.py checks the
modules loaded). Anything else (`--help`, a typo) returns None, and the caller shows the
typer app of `injector.agent.cli`, which documents both.

`run` also keeps Python's `ssl` module out. The agent's TLS is gRPC's own (BoringSSL,
inside grpcio); `ssl`, which asyncio imports whenever it can, would map OpenSSL's libssl
and libcrypto for nothing: about 4 MiB of the agent's resident memory. With None in
`sys.modules` an `import ssl` fails at once and asyncio runs without it (as it does on a
Python built without OpenSSL). Code added to the agent's path that needs `ssl` must
import it before `run` is called, or drop this. With tracing on (an `OTEL_*` endpoint set,
`injector.agent.tracing.wanted`) `ssl` is left alone: OpenTelemetry's OTLP exporter and its
dependencies may import it, and a traced agent pays those 4 MiB.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

UNUSED_MODULES = ("ssl",)
"""Standard library modules the agent's dependencies import but the agent never uses."""


def launch(args: Sequence[str]) -> int | None:
    """The exit code of `keyferry agent <args>`; None when `args` is not one of the two
    commands exactly (the caller shows the full command line's help or error)."""
    if list(args) == ["check"]:
        return check()
    if list(args) == ["run"]:
        return run()
    return None


def run() -> int:
    """`keyferry agent run`: the agent, until SIGTERM; its exit code."""
    from . import tracing  # noqa: PLC0415 - `check` loads the standard library only

    if not tracing.wanted(os.environ):
        for name in UNUSED_MODULES:
            if name not in sys.modules:
                sys.modules[name] = None  # type: ignore[assignment]
    from . import main  # noqa: PLC0415 - each command loads only its own

    return main.run(os.environ)


def check() -> int:
    """`keyferry agent check`: the probes' check (`injector.probe`); its exit code."""
    from injector import probe  # noqa: PLC0415

    return probe.check(os.environ)
