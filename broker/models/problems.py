"""Validation problems as text that never carries the value that was given.

`str(pydantic.ValidationError)` quotes each bad input (`input_value=...`): a Vault reply of
an unexpected shape would put a password into the pod's error, the broker's log, the
store's `last_error` and the agent's log. Every place that turns a ValidationError into
words uses these instead, and raises `from None` where the input may hold a secret (a
chained cause is printed, input and all, by any logged traceback).
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import ErrorDetails

MAX_LISTED = 5


def problem(error: ErrorDetails) -> str:
    """One problem as `dotted.field: message`; the message is pydantic's (or a validator's)
    and names what was expected, not what was given."""
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"{where}: {error['msg']}"


def problems(exc: ValidationError) -> list[str]:
    """Every problem of the error, without inputs."""
    return [problem(error) for error in exc.errors(include_input=False, include_url=False)]


def describe(exc: ValidationError, limit: int = MAX_LISTED) -> str:
    """The first `limit` problems on one line, and how many more there were."""
    listed = problems(exc)
    text = "; ".join(listed[:limit])
    more = len(listed) - limit
    return f"{text}; and {more} more" if more > 0 else text
