"""`keyferry console`: the operator console in the browser (broker/console), served on this
machine's loopback with the CLI context's mutual-TLS identity. Needs the optional extra
`keyferry[console]`."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from broker.errors import Unauthenticated
from broker.identity.operators import operator_from_certificate

from .admin_channel import channel_credentials
from .context import ContextInvalid, ContextOption, load_context
from .exits import CONFIG

EPILOG = (
    "Examples:\n\n"
    "  keyferry console\n\n"
    "  keyferry console --context ~/.config/keyferry/prod.yaml --port 8765 --open\n\n"
    "Serves on 127.0.0.1 only, at a random port unless --port is given, and prints a URL "
    "with a one-time token: the first visit exchanges it for a session cookie, and the link "
    "then stops working (start the console again for a new one). Requests for another Host "
    "than 127.0.0.1/localhost on that port are refused (DNS rebinding), and every action "
    "carries a CSRF token.\n\n"
    "The console calls the broker's admin listener as the context's operator: it can do "
    "exactly what that certificate and Cedar allow, and each action is audited as that "
    "operator. No credential value is ever shown.\n\n"
    "Exit codes: 0 stopped with Ctrl-C; 2 the context is invalid, the port is taken, or the "
    "console extra is not installed (pip install 'keyferry[console]')."
)


def console(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="the local port; 0 for one the system picks")
    ] = 0,
    open_browser: Annotated[
        bool, typer.Option("--open", help="open the URL in the default browser")
    ] = False,
    context: ContextOption = None,
) -> None:
    """Serve the operator console on this machine's loopback."""
    try:
        from broker.console.admin import Target  # noqa: PLC0415 - the optional extra
        from broker.console.serve import serve  # noqa: PLC0415
    except ImportError as exc:
        typer.echo(
            f"the console needs the optional extra: pip install 'keyferry[console]' ({exc})",
            err=True,
        )
        raise typer.Exit(CONFIG) from None
    try:
        loaded, _path = load_context(context)
        credentials = channel_credentials(loaded)
        operator = operator_from_certificate(loaded.cert.read_bytes()).name
    except (ContextInvalid, Unauthenticated) as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(CONFIG) from None

    def announce(url: str) -> None:
        typer.echo(f"keyferry console for operator {operator} (Ctrl-C to stop):", err=True)
        typer.echo(url)
        if open_browser:
            webbrowser.open(url)

    try:
        serve(Target(loaded.address, credentials, loaded.server_name), operator, port, announce)
    except OSError as exc:
        typer.echo(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another --port", err=True
        )
        raise typer.Exit(CONFIG) from None
