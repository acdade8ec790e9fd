"""The two scales of the fault tests: the short one every test run uses, and the issue's
full one (Vault away 60 s, 50 pods crash-looping for 10 minutes, the broker away for
minutes at production backoff, replicas killed at many random points) that
`tests/run faults` selects with KEYFERRY_FAULT_SCALE=full. A module takes its figures with
`pick(short, full)` so both scales run the same code."""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")
VARIABLE = "KEYFERRY_FAULT_SCALE"


class ScaleError(ValueError):
    """KEYFERRY_FAULT_SCALE holds something other than `short` or `full`."""


def _full() -> bool:
    value = os.environ.get(VARIABLE, "short")
    if value not in ("short", "full"):
        raise ScaleError(f"{VARIABLE}={value!r}: set it to 'short' (the default) or 'full'")
    return value == "full"


FULL = _full()


def pick(short: T, full: T) -> T:
    """`full` when the issue's full scale was asked for, else `short`."""
    return full if FULL else short
