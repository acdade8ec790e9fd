"""The agent's face of traces: the standard library alone while tracing is off.

`broker.tracing` is the one implementation of spans (OpenTelemetry, OTLP gRPC), but its
package imports pydantic (its settings model): about 4 MiB of the agent's resident memory
(issue 19) for a feature that is off in most pods. So the agent calls this module, which
decides from the `OTEL_*` variables alone (`wanted`, the rule of
`broker.tracing.tracing_wanted` with the settings left unset; tests/unit/test_tracing.py
holds the two equal) and imports `broker.tracing` only in `start`, once tracing is on. Off,
every call returns a shared no-op object or "" and nothing is imported
(tests/unit/test_agent_pieces.py and test_tracing.py check the modules loaded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Literal, Protocol

Attribute = str | int | bool
Kind = Literal["internal", "server", "client", "producer", "consumer"]
SERVICE = "keyferry-agent"
TRACEPARENT = "traceparent"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_TRACEPARENT_FORM = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class TracingUnavailable(RuntimeError):
    """Tracing was asked for (an OTEL_* endpoint), but `keyferry[tracing]` is not installed."""


class Span(Protocol):
    def set(self, key: str, value: Attribute | None) -> None: ...


class _Off:
    """The span of an agent whose tracing is off: one shared object, no work."""

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: Attribute | None) -> None:
        return None


_OFF = _Off()
_on: ModuleType | None = None
"""`broker.tracing`, once `start` turned it on."""


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the agent exports traces: an OTLP endpoint is named, and neither
    OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none says no."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def start(environ: Mapping[str, str]) -> bool:
    """Turn tracing on when `environ` asks for it (then importing broker.tracing and
    OpenTelemetry); whether it is on. Raises TracingUnavailable without the packages."""
    global _on  # noqa: PLW0603 - one tracer per process, as OpenTelemetry has it
    if _on is not None:
        return True
    if not wanted(environ):
        return False
    try:
        from broker import tracing  # noqa: PLC0415 - only when on: it loads pydantic
    except ImportError as exc:  # pydantic itself missing: the same answer
        raise TracingUnavailable(f"{exc.name or 'a package'} is not installed") from None
    try:
        started = tracing.start(tracing.TracingSettings(service_name=SERVICE), environ=environ)
    except tracing.TracingUnavailable as exc:
        raise TracingUnavailable(str(exc)) from None
    if started:
        _on = tracing
    return started


def stop() -> None:
    """Export what is buffered (the agent is ending)."""
    global _on
    on, _on = _on, None
    if on is not None:
        on.stop()


def enabled() -> bool:
    return _on is not None


def span(
    name: str,
    attributes: Mapping[str, Attribute | None] | None = None,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
) -> AbstractContextManager[Span]:
    """broker.tracing.span when on; the shared no-op otherwise."""
    on = _on
    if on is None:
        return _OFF
    made: AbstractContextManager[Span] = on.span(name, attributes, parent=parent, kind=kind)
    return made


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None (off, or no span)."""
    on = _on
    if on is None:
        return None
    found: str | None = on.trace_id()
    return found


def traceparent() -> str:
    """The current span as a W3C traceparent; "" when off or outside any span."""
    on = _on
    if on is None:
        return ""
    value: str = on.traceparent()
    return value


def metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the current span to the broker; () when off."""
    value = traceparent()
    return ((TRACEPARENT, value),) if value else ()


def received(value: str) -> str:
    """A traceparent from the broker if it has the W3C form (55 characters); "" otherwise,
    so a malformed one is ignored, never an error."""
    return value if len(value) == 55 and _TRACEPARENT_FORM.match(value) else ""
