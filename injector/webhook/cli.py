"""`keyferry webhook ...`: run the admission webhook. Mounted into the `keyferry` command."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from .config import load_config
from .errors import InvalidConfig
from .server import serve as run_server

app = typer.Typer(
    name="webhook",
    help=("The mutating admission webhook that injects the keyferry agent into pods."),
    epilog="Examples:\n\n  keyferry webhook serve --config /etc/keyferry/webhook.yaml",
    no_args_is_help=True,
)


@app.command(
    help=(
        "Serve AdmissionReview v1 over HTTPS on POST /mutate (GET /healthz for probes) until "
        "SIGTERM or Ctrl-C."
    ),
    epilog=(
        "Examples:\n\n"
        "  keyferry webhook serve --config webhook.yaml\n\n"
        "The file's fields (cluster_name, agent.image, broker.address, server.cert_file, ...) "
        "are described in docs/injector.md.\n\n"
        "Exit codes: 0 stopped by SIGTERM/SIGINT; 2 the configuration is invalid (the file "
        "and field are named); 1 it could not serve."
    ),
)
def serve(
    config: Annotated[Path, typer.Option("--config", help="the webhook's YAML configuration file")],
) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run_server(load_config(config), stop)
    except InvalidConfig as exc:
        typer.echo(f"keyferry webhook: {exc.message}", err=True)
        raise typer.Exit(2) from exc
