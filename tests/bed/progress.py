"""Progress lines for long bed work (builds, installs, start-up), on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    """Print one progress line, prefixed so it stands out in pytest and CI logs."""
    print(f"[bed] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a step, then its duration or its failure."""
    say(f"{what} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"{what}: failed after {time.monotonic() - started:.1f}s")
        raise
    say(f"{what}: done in {time.monotonic() - started:.1f}s")
