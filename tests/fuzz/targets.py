"""How many inputs each fuzz target saw (printed at the end of the run)."""

from __future__ import annotations

from collections import Counter

INPUTS: Counter[str] = Counter()


def seen(target: str) -> None:
    INPUTS[target] += 1
