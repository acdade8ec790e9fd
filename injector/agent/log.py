"""The agent's log: one JSON object a line on stderr, as the broker's structlog setup writes
them (`event`, `level`, `timestamp` in ISO 8601 UTC, then the call's own fields), from the
standard library alone.

structlog loads rich, pygments and more (about 6 MiB of the agent's resident memory, issue
19) for what the agent needs of it: `log.info("event", key=value)`. Info and above are
written; nothing of a credential's value is ever passed here. A line written inside a span
(tracing on, `injector.agent.tracing`) carries its `trace_id`, as the broker's lines do, so
a log line leads to its trace. `capture()` collects the entries instead, for tests.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from . import tracing

Entry = dict[str, Any]

_captured: list[list[Entry]] = []


class Logger:
    """`log.info("credential.written", credential="db")`: one line with those fields."""

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self, event: str, **fields: object) -> None:
        _emit("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        _emit("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        _emit("error", event, fields)

    def exception(self, event: str, **fields: object) -> None:
        """An error with the exception being handled, its traceback as `exception`."""
        _emit("error", event, {**fields, "exception": traceback.format_exc().rstrip()})


def get_logger(name: str) -> Logger:
    return Logger(name)


def _emit(level: str, event: str, fields: dict[str, object]) -> None:
    trace_id = tracing.trace_id()
    if trace_id is not None and "trace_id" not in fields:
        fields = {**fields, "trace_id": trace_id}
    if _captured:
        _captured[-1].append({"event": event, "log_level": level, **fields})
        return
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    entry = {**fields, "event": event, "level": level, "timestamp": stamp}
    line = json.dumps(entry, default=repr)
    stream = sys.stderr  # looked up on each call: a test's or a redirected stderr
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # stderr closed: the log is lost, the agent goes on
        return


@contextmanager
def capture() -> Iterator[list[Entry]]:
    """The entries logged inside the block (each with `event` and `log_level`), not written."""
    entries: list[Entry] = []
    _captured.append(entries)
    try:
        yield entries
    finally:
        _captured.pop()
