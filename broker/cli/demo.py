"""`keyferry demo`: the README's first command, a pointer to a source checkout. The demo
drives the test bed's real servers, so its driver lives in the checkout (tests/demo) and
is never part of the installed package: from an editable install this command replaces
itself with `python -m tests.demo` run in that checkout; anywhere else it says to clone the
repository and run `tests/run demo`."""

from __future__ import annotations

import os
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
    "It runs `python -m tests.demo` in the source checkout keyferry is installed from "
    "(an editable install, as `tests/run setup` makes); an installed package has no demo.\n\n"
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
    if not (checkout / "tests" / "demo" / "__main__.py").is_file():
        typer.echo(
            "keyferry demo runs from a source checkout (it needs the test bed under tests/): "
            "clone the keyferry repository and run `tests/run demo` there",
            err=True,
        )
        raise typer.Exit(CONFIG)
    flags = [*(["--hold"] if hold else []), *(["--show-secrets"] if show_secrets else [])]
    os.chdir(checkout)  # `-m tests.demo` finds the checkout's tests package from here
    argv = [sys.executable, "-m", "tests.demo", *flags]
    os.execv(sys.executable, argv)  # noqa: S606 (this interpreter, fixed arguments, no shell)
