"""`python -m tests.demo [--hold] [--show-secrets]` from the checkout's root: the demo's
driver (tests/run demo runs it; `keyferry demo` in a source checkout starts it too)."""

from __future__ import annotations

import argparse
import sys

from .driver import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.demo",
        description="keyferry's main job on the test bed's real servers, narrated step by step",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="keep everything running until Ctrl-C, and say how to reach it",
    )
    parser.add_argument("--show-secrets", action="store_true", help="print credentials unmasked")
    options = parser.parse_args(argv)
    return run(hold=options.hold, show_secrets=options.show_secrets)


if __name__ == "__main__":
    sys.exit(main())
