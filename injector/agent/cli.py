"""`keyferry agent ...`: the in-pod agent. Mounted into the `keyferry` command."""

from __future__ import annotations

import logging
import os
import sys

import structlog
import typer

from . import main

app = typer.Typer(
    name="agent",
    help=(
        "The in-pod agent the keyferry webhook injects. It reads its spec from "
        "KEYFERRY_AGENT_SPEC (set by the webhook).\n\n"
        "Examples:\n\n"
        "  keyferry agent run     # issue, write and keep the pod's credential files\n\n"
        "  keyferry agent check   # exit 0 once every file exists (the startupProbe)"
    ),
    no_args_is_help=True,
)


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


@app.command(help="Issue every credential, write its file atomically, hold Watch until SIGTERM.")
def run() -> None:
    _configure_logging()
    raise typer.Exit(main.run(os.environ))


@app.command(help="Exit 0 when every credential file exists, 1 otherwise (the startupProbe).")
def check() -> None:
    raise typer.Exit(main.check(os.environ))
