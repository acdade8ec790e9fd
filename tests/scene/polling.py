"""Waiting for Vault, PostgreSQL or a broker to act: a bounded poll, never a sleep whose
length is asserted. The bound is generous and only says when to give up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
UNTIL = 30.0  # default bound of a poll, in seconds


async def until(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = UNTIL,
    every: float = 0.1,
) -> T:
    """Poll an async probe every `every` seconds until it returns something truthy (which
    is returned), at most `within` seconds; then fail naming `what` never happened."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(every)


async def until_true(
    probe: Callable[[], bool], what: str, *, within: float = UNTIL, every: float = 0.1
) -> None:
    """`until` for a plain probe (called on the event loop, so it must be quick)."""
    deadline = asyncio.get_running_loop().time() + within
    while not probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(every)
