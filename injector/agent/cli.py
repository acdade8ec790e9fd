"""`keyferry agent ...`: the in-pod agent. Mounted into the `keyferry` command."""

from __future__ import annotations

import logging
import os
import sys

import structlog
import typer

from broker import tracing
from injector import probe

from . import main

app = typer.Typer(
    name="agent",
    help=(
        "The in-pod agent the keyferry webhook injects. It reads its spec from "
        "KEYFERRY_AGENT_SPEC (set by the webhook)."
    ),
    epilog=(
        "Examples:\n\n"
        "  keyferry agent run     # issue, write and keep the pod's credential files\n\n"
        "  keyferry agent check   # exit 0 once every file exists (what the probes check)"
    ),
    no_args_is_help=True,
)


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            tracing.add_trace_id,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


@app.command(
    help="Issue every credential, write its file atomically, hold Watch until SIGTERM.",
    epilog=(
        "Examples:\n\n"
        "  KEYFERRY_AGENT_SPEC='{...}' keyferry agent run   # as the webhook injects it\n\n"
        "The spec (broker address and CA, credentials, formats, paths, retry backoff) comes "
        "from the webhook; see docs/injector.md. No credential value is ever logged.\n\n"
        "Exit codes: 0 stopped by SIGTERM, every lease released; 1 a credential could not be "
        "issued or written; 2 the spec is invalid."
    ),
)
def run() -> None:
    _configure_logging()
    raise typer.Exit(main.run(os.environ))


@app.command(
    help="Exit 0 when every credential file exists, 1 otherwise (what the probes check).",
    epilog=(
        "Examples:\n\n"
        "  kubectl exec POD -c keyferry-agent -- keyferry agent check; echo $?\n\n"
        "The pod's startup and readiness probes run the same check as `python3 -I -m "
        "injector.probe`, which loads only the standard library.\n\n"
        "Exit codes: 0 every file exists; 1 a file is missing; 2 the spec is invalid."
    ),
)
def check() -> None:
    raise typer.Exit(probe.check(os.environ))
