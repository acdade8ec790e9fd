"""`keyferry broker serve`: run the broker from a config file until SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from broker.errors import KeyferryError
from broker.tracing import TracingUnavailable

from .config_file import ConfigFile, load_or_exit
from .exits import FAILED

app = typer.Typer(
    name="broker",
    help="Run the keyferry broker.",
    epilog="Examples:\n\n  keyferry broker serve --config /etc/keyferry/broker.yaml",
    no_args_is_help=True,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  keyferry broker serve --config /etc/keyferry/broker.yaml\n\n"
        "  KEYFERRY_VAULT__ADDR=https://vault:8200 keyferry broker serve --config broker.yaml\n\n"
        "A setting from the environment (prefix KEYFERRY_, groups split by __) wins over the "
        "file. See docs/examples/broker.yaml for every group.\n\n"
        "Exit codes: 0 stopped by SIGTERM/SIGINT; 2 the configuration is invalid; "
        "1 the broker could not start (the message says which part and why)."
    )
)
def serve(
    config: ConfigFile,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve the workload (TLS) and admin listeners until SIGTERM, then stop gracefully."""
    from broker.server.logs import configure_logging  # noqa: PLC0415 - server loads only here
    from broker.server.run import serve as run  # noqa: PLC0415

    settings = load_or_exit(config)
    configure_logging(log_level)

    def ready(server: object) -> None:
        from broker.server import BrokerServer  # noqa: PLC0415

        assert isinstance(server, BrokerServer)  # noqa: S101 (narrows the type for mypy only)
        typer.echo(f"keyferry broker: workload listener on port {server.port} (TLS)", err=True)
        if server.metrics_port is not None:
            typer.echo(f"keyferry broker: metrics on port {server.metrics_port}", err=True)
        if server.tls.generated:
            typer.echo(
                f"keyferry broker: self-signed TLS identity at {server.tls.cert_path} "
                "(development only; set workload.tls_cert and workload.tls_key)",
                err=True,
            )
        if server.admin_port is not None:
            typer.echo(
                f"keyferry broker: admin listener on port {server.admin_port} (mutual TLS)",
                err=True,
            )
        else:
            typer.echo(
                "keyferry broker: no admin listener (set admin.tls_cert, admin.tls_key and "
                "admin.client_ca; `keyferry admin init` writes them)",
                err=True,
            )

    try:
        asyncio.run(run(settings, ready=ready))
    except KeyferryError as exc:
        typer.echo(f"keyferry broker: cannot start: {exc.message}", err=True)
        raise typer.Exit(FAILED) from None
    except TracingUnavailable as exc:
        typer.echo(f"keyferry broker: cannot start: {exc}", err=True)
        raise typer.Exit(FAILED) from None
