"""Fixtures of the attack scene (tests/security/attack_scene.py), by name, and its hang bound.

A test here that has not finished (set-up, call and tear-down together) within
`HANG_BOUND` seconds has hung: the CI run at 17ddd38 waited the suite's 600 s at a logging
handler's lock. Two watchdogs end it sooner, and say where every thread was:

- faulthandler, `DUMP_BEFORE` seconds before the bound, writes the stack of every thread
  to stderr from its own C thread: it needs no Python code to run, so it works even when
  the thread holding the GIL never lets go of it;
- then pytest-timeout's signal method fails the test (a lock wait is interrupted by the
  signal), so its fixtures are torn down and the bed's servers stopped, and the run goes on.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .attack_scene import broker, exposure

__all__ = ["broker", "exposure"]  # the attack scene's fixtures; the rest come from tests/scene

# The slowest test here takes about 40 s on a loaded machine, the first one's cold bed start
# included; the suite's own bound stays for everything else.
HANG_BOUND = 180
DUMP_BEFORE = 5
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(HANG_BOUND, method="signal"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    if not item.path.is_relative_to(HERE):
        yield
        return
    faulthandler.dump_traceback_later(HANG_BOUND - DUMP_BEFORE, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
