"""The OpenTelemetry side of `broker.tracing`: imported only once tracing is turned on.

One TracerProvider per process (kept here, not installed as OpenTelemetry's global one, so
nothing else in the process starts exporting by accident), a batch processor and the OTLP
gRPC exporter. The SDK reads the standard `OTEL_*` variables for what the settings leave
unset (service name and resource, sampler, exporter endpoint, headers, TLS, batching).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span as OtelSpan
from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import TRACEPARENT, Attribute, Kind, Span
from .settings import TracingSettings

_KINDS: dict[Kind, SpanKind] = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
MAX_ATTRIBUTE_CHARS = 256


class _Handle:
    def __init__(self, span: OtelSpan) -> None:
        self._span = span

    def set(self, key: str, value: Attribute | None) -> None:
        if value is not None:
            self._span.set_attribute(key, _bounded(value))


class OtelBackend:
    def __init__(
        self, settings: TracingSettings, service: str, exporter: SpanExporter | None = None
    ) -> None:
        """Spans batched to the OTLP collector; or, given an `exporter` (tests), handed to
        it one by one as they end."""
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
        self._provider = TracerProvider(resource=Resource.create(attributes))
        if exporter is None:
            otlp = OTLPSpanExporter(endpoint=settings.endpoint)
            self._provider.add_span_processor(BatchSpanProcessor(otlp))
        else:
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("keyferry")
        self._propagator = TraceContextTextMapPropagator()

    def span(
        self,
        name: str,
        attributes: Mapping[str, Attribute | None] | None,
        parent: str | None,
        kind: Kind,
    ) -> AbstractContextManager[Span]:
        return self._span(name, attributes, parent, kind)

    @contextmanager
    def _span(
        self,
        name: str,
        attributes: Mapping[str, Attribute | None] | None,
        parent: str | None,
        kind: Kind,
    ) -> Iterator[Span]:
        context = self._propagator.extract({TRACEPARENT: parent}) if parent else None
        values = {k: _bounded(v) for k, v in (attributes or {}).items() if v is not None}
        with self._tracer.start_as_current_span(
            name,
            context=context,
            kind=_KINDS[kind],
            attributes=values,
            record_exception=False,  # an exception's message is not an identifier
            set_status_on_exception=False,
        ) as span:
            try:
                yield _Handle(span)
            except BaseException as error:
                _failed(span, error)
                raise

    def trace_id(self) -> str | None:
        context = get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get(TRACEPARENT)

    def stop(self) -> None:
        self._provider.shutdown()


def _failed(span: OtelSpan, error: BaseException) -> None:
    """The error's type and keyferry reason on the span; never its message."""
    reason = getattr(error, "reason", None)
    span.set_attribute("error.type", type(error).__name__)
    if isinstance(reason, str):
        span.set_attribute("keyferry.reason", reason)
    span.set_status(Status(StatusCode.ERROR, reason if isinstance(reason, str) else None))


def _bounded(value: Attribute) -> Attribute:
    if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_CHARS:
        return value[:MAX_ATTRIBUTE_CHARS]
    return value
