"""`keyferry agent run` and `keyferry agent check` without a command-line framework.

The console script (broker/cli/entry.py) calls `launch` with the arguments after `agent`.
These two commands, the only ones a pod runs, import nothing they do not use: `check` the
standard library only (`injector.probe`), `run` the agent with gRPC and the generated API,
never typer, click, rich, pydantic or structlog (tests/unit/test_agent_pieces.py checks the
modules loaded). Anything else (`--help`, a typo) returns None, and the caller shows the
typer app of `injector.agent.cli`, which documents both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


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
    from . import main  # noqa: PLC0415 - each command loads only its own

    return main.run(os.environ)


def check() -> int:
    """`keyferry agent check`: the probes' check (`injector.probe`); its exit code."""
    from injector import probe  # noqa: PLC0415

    return probe.check(os.environ)
