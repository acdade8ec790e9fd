"""The `keyferry` console script.

`keyferry agent ...` runs in every injected pod, so its process must not pay for the
broker's imports (gRPC servers, SQLAlchemy, Cedar, hvac: about 50 MiB of resident memory).
`keyferry agent run` and `keyferry agent check` go straight to `injector.agent.launch`
(no typer, no click); any other `keyferry agent ...` to the agent's own command line;
everything else loads the full CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        from injector.agent.launch import launch  # noqa: PLC0415 - the lean path

        code = launch(sys.argv[2:])
        if code is not None:
            sys.exit(code)
        from injector.agent.cli import app as agent  # noqa: PLC0415

        agent(args=sys.argv[2:], prog_name="keyferry agent")
        return
    from broker.cli.main import app  # noqa: PLC0415

    app()
