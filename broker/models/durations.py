"""Durations as ops write them in YAML: `90s`, `15m`, `1h30m`, `2d`, or whole seconds."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+)([smhd])")
_WHOLE = re.compile(r"(?:\d+[smhd])+")


def parse_duration(value: object) -> timedelta:
    """A positive duration from `15m`-style text or whole seconds; ValueError says the fix."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        seconds = float(sum(int(n) * UNITS[u] for n, u in _PART.findall(value)))
    else:
        raise ValueError(
            f"{value!r} is not a duration; write whole seconds or units s, m, h, d, "
            "like 90s, 15m or 1h30m"
        )
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Vault's form of a duration: whole seconds with an `s`."""
    return f"{int(value.total_seconds())}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
