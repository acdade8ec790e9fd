"""`keyferry demo`: the README's first command. A thin entry: the demo drives the test bed's
real servers, so its driver lives in a source checkout (tests/demo) and is imported from
the checkout this package is installed from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .exits import CONFIG

EPILOG = (
    "Examples:\n\n"
    "  tests/run demo                 # installs what it needs, then runs this\n\n"
    "  keyferry demo --hold           # ... and keeps everything running until Ctrl-C\n\n"
    "  keyferry demo --show-secrets   # print credentials unmasked\n\n"
    "Needs root and a source checkout: cluster a's pod runs on a real node (containerd and "
    "a kubelet, from images the bed builds), cluster b's on the kubelet harness (it mounts "
    "each pod's volumes in a mount namespace and runs its containers as their UIDs); where "
    "the node cannot start, cluster a's pod uses the harness too and the demo says why. "
    "The bed builds its servers from Go modules on first use and caches them outside the "
    "repository.\n\n"
    "Exit codes: 0 success (the last line says so); 1 a step failed (the last line says "
    "which); 2 it cannot run here."
)


def demo(
    hold: Annotated[
        bool, typer.Option(help="keep everything running until Ctrl-C, and say how to reach it")
    ] = False,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="print credentials unmasked")
    ] = False,
) -> None:
    """Run keyferry's main job on the test bed's real servers, narrated step by step."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "tests" / "demo" / "driver.py").exists():
        typer.echo(
            "keyferry demo runs from a source checkout (it needs the test bed under tests/): "
            "clone the keyferry repository and run `tests/run demo` there",
            err=True,
        )
        raise typer.Exit(CONFIG)
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from tests.demo.driver import run  # noqa: PLC0415 - only a checkout has the bed

    code = run(hold=hold, show_secrets=show_secrets)
    if code:
        raise typer.Exit(code)
