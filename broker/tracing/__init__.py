"""Distributed traces (OpenTelemetry), off by default, behind one small face.

The broker and the agent call `span(...)` around the steps worth seeing (the gRPC call,
authentication, the pod check, policy, each store step, each Vault call, audit, the push of
a Watch event, the agent's Issue and Release); with tracing off each call returns one shared
no-op object and nothing of OpenTelemetry is imported (the agent's memory target is measured
that way: tests/unit/test_tracing.py holds it). `start` turns tracing on for the process: it
imports `broker.tracing.otel` (the `keyferry[tracing]` extra) and exports spans over OTLP
gRPC to the collector that the settings or the standard `OTEL_*` variables name.

Context crosses processes as a W3C `traceparent`: in gRPC metadata for a call, and in the
`traceparent` field of a Watch event and of an Ack, so a rotation's trace runs from the
broker's push through the agent's handling to the Ack the broker receives.

Attributes are identifiers only (method, lease id, role, Vault's request id, a store
step's name): never a credential value, a token or a key. An error is recorded as its type
and keyferry reason, never its message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol

from .settings import TracingSettings, tracing_wanted

Attribute = str | int | bool
Kind = Literal["internal", "server", "client", "producer", "consumer"]
TRACEPARENT = "traceparent"
_TRACEPARENT_FORM = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

__all__ = [
    "TRACEPARENT",
    "Attribute",
    "Kind",
    "Span",
    "TracingSettings",
    "TracingUnavailable",
    "add_trace_id",
    "enabled",
    "metadata",
    "received",
    "span",
    "start",
    "stop",
    "trace_id",
    "traceparent",
    "tracing_wanted",
]


class TracingUnavailable(RuntimeError):
    """Tracing was asked for, but the OpenTelemetry packages are not installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"tracing is on (tracing.enabled or OTEL_EXPORTER_OTLP_ENDPOINT) but {missing} is "
            "not installed: install keyferry[tracing], or turn tracing off"
        )


class Span(Protocol):
    """What a step can add to its span once it knows more (Vault's request id, an
    outcome); a no-op with tracing off."""

    def set(self, key: str, value: Attribute | None) -> None: ...


class Backend(Protocol):
    def span(
        self,
        name: str,
        attributes: Mapping[str, Attribute | None] | None,
        parent: str | None,
        kind: Kind,
    ) -> AbstractContextManager[Span]: ...

    def trace_id(self) -> str | None: ...

    def traceparent(self) -> str | None: ...

    def stop(self) -> None: ...


class _Off:
    """The span of a process whose tracing is off: one shared object, no work."""

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: Attribute | None) -> None:
        return None


_OFF = _Off()
_backend: Backend | None = None


def enabled() -> bool:
    return _backend is not None


def start(
    settings: TracingSettings, service: str | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Turn tracing on for this process when `settings` (or, unset there, the `OTEL_*`
    variables) ask for it; whether it is on. Idempotent."""
    global _backend  # noqa: PLW0603 - one tracer per process, as OpenTelemetry has it
    if _backend is not None:
        return True
    if not tracing_wanted(settings, os.environ if environ is None else environ):
        return False
    try:
        from .otel import OtelBackend  # noqa: PLC0415 - the extra is imported only when on
    except ImportError as exc:
        raise TracingUnavailable(exc.name or "opentelemetry") from None
    _backend = OtelBackend(settings, service or settings.service_name)
    return True


def stop() -> None:
    """Export what is buffered and turn tracing off (the process is ending)."""
    global _backend
    backend, _backend = _backend, None
    if backend is not None:
        backend.stop()


def span(
    name: str,
    attributes: Mapping[str, Attribute | None] | None = None,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
) -> AbstractContextManager[Span]:
    """A span around a step, the current one's child (or `parent`'s, a W3C traceparent
    from another process); attributes whose value is None are left out."""
    backend = _backend
    if backend is None:
        return _OFF
    return backend.span(name, attributes, parent or None, kind)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None (off, or no span)."""
    backend = _backend
    return None if backend is None else backend.trace_id()


def traceparent() -> str:
    """The current span as a W3C traceparent, for a message that crosses to another
    process; "" when off or outside any span."""
    backend = _backend
    return "" if backend is None else backend.traceparent() or ""


def received(value: str) -> str:
    """A traceparent that came from another process, if it has the W3C form (55
    characters); "" otherwise, so a malformed one is ignored, never an error."""
    return value if len(value) == 55 and _TRACEPARENT_FORM.match(value) else ""


def metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the current span to the server; () when off."""
    value = traceparent()
    return ((TRACEPARENT, value),) if value else ()


def add_trace_id(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: the current trace id on every log line written inside a
    span, so a log line leads to its trace (and to the audit records of the same call)."""
    if _backend is not None and "trace_id" not in event:
        found = _backend.trace_id()
        if found is not None:
            event["trace_id"] = found
    return event
