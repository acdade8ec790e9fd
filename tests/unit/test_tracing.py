"""broker.tracing: off by default, OpenTelemetry imported only when on, the rules that turn it
on, and the audit record's optional trace id (old records keep their canonical form)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from broker import tracing
from broker.audit.records import (
    GENESIS,
    AuditEvent,
    Principal,
    PrincipalKind,
    parse_line,
    seal,
)
from broker.errors import LimitExceeded
from broker.tracing import TracingSettings, tracing_wanted
from broker.tracing.otel import OtelBackend
from injector.agent import log as agent_log
from injector.agent import tracing as agent_tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}

# The agent as `keyferry agent run` loads it, tracing off (no OTEL_* endpoint): nothing of
# OpenTelemetry, nor broker.tracing (pydantic), may be imported (the agent's memory target
# is measured that way); its face of traces is injector.agent.tracing.
AGENT_OFF = """
import json, os, sys
for name in [k for k in os.environ if k.startswith("OTEL_")]:
    del os.environ[name]
import injector.agent.launch, injector.agent.main, injector.agent.session, injector.agent.client
from injector.agent import tracing
on = tracing.start(os.environ)
with tracing.span("agent issue", {"keyferry.credential": "db"}) as span:
    span.set("keyferry.lease_id", "x")
print(json.dumps({"on": on, "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
                  "broker.tracing": "broker.tracing" in sys.modules,
                  "traceparent": tracing.traceparent(), "metadata": list(tracing.metadata())}))
"""


def test_the_agent_imports_no_opentelemetry_with_tracing_off() -> None:
    found = subprocess.run(
        [sys.executable, "-c", AGENT_OFF], capture_output=True, text=True, check=True
    )
    report = json.loads(found.stdout)
    assert report == {
        "on": False,
        "otel": [],
        "broker.tracing": False,
        "traceparent": "",
        "metadata": [],
    }


@pytest.mark.parametrize(
    ("enabled", "environ", "wanted"),
    [
        (None, {}, False),  # off by default
        (None, ENDPOINT, True),  # the standard variable names a collector
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, True),
        (False, ENDPOINT, False),  # the settings say no
        (True, {}, True),  # the settings say yes (the endpoint's default)
        (True, {"OTEL_SDK_DISABLED": "true"}, False),  # the standard off switch wins
        (None, {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_when_tracing_is_on(enabled: bool | None, environ: dict[str, str], wanted: bool) -> None:
    assert tracing_wanted(TracingSettings(enabled=enabled), environ) is wanted
    if enabled is None:  # the agent has no settings: its own rule, the standard library's
        assert agent_tracing.wanted(environ) is wanted


def test_the_agents_face_follows_broker_tracing_when_on(spans: InMemorySpanExporter) -> None:
    """With tracing on the agent's spans, traceparents and log lines are broker.tracing's."""
    agent_tracing._on = tracing
    try:
        with agent_tracing.span("agent issue", {"keyferry.credential": "db"}):
            carried = agent_tracing.traceparent()
            assert agent_tracing.received(carried) == carried
            assert agent_tracing.metadata() == (("traceparent", carried),)
            with agent_log.capture() as lines:
                agent_log.get_logger("t").info("credential.written", credential="db")
            assert lines[0]["trace_id"] == agent_tracing.trace_id() == carried[3:35]
        with agent_log.capture() as lines:
            agent_log.get_logger("t").info("outside")
        assert "trace_id" not in lines[0]
    finally:
        agent_tracing._on = None
    (issue,) = spans.get_finished_spans()
    assert issue.name == "agent issue"
    assert agent_tracing.traceparent() == ""
    assert agent_tracing.received("not-a-traceparent") == ""


def test_an_endpoint_is_checked_for_form() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        TracingSettings(endpoint="http://collector:4317/ x")


def test_a_traceparent_from_another_process_is_taken_only_in_its_w3c_form() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.received(good) == good
    assert tracing.received(good.upper()) == ""
    assert tracing.received(good + "0") == ""
    assert tracing.received("x" * 10_000) == ""


def _event(**fields: object) -> AuditEvent:
    return AuditEvent(
        who=Principal(kind=PrincipalKind.WORKLOAD, name="a/orders/api"),
        action="lease.active",
        **fields,  # type: ignore[arg-type]
    )


def test_a_record_without_a_trace_id_keeps_the_canonical_form_it_had() -> None:
    record = seal(_event(), 0, GENESIS, datetime(2026, 1, 1, tzinfo=UTC))
    assert b"trace_id" not in record.line()
    assert parse_line(record.line()) == record


def test_a_record_with_a_trace_id_carries_it_under_its_hash() -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    record = seal(_event(trace_id=trace), 0, GENESIS, datetime(2026, 1, 1, tzinfo=UTC))
    assert json.loads(record.line())["trace_id"] == trace
    assert parse_line(record.line()).computed_hash() == record.hash
    edited = record.line().replace(trace.encode(), b"1" * 32)
    assert parse_line(edited).computed_hash() != record.hash
    with pytest.raises(ValueError, match="trace_id"):
        _event(trace_id="not-a-trace")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, every ended span kept in memory; off again after."""
    exporter = InMemorySpanExporter()
    tracing._backend = OtelBackend(TracingSettings(enabled=True), "unit", exporter)
    yield exporter
    tracing.stop()


def test_spans_nest_and_cross_processes_as_a_traceparent(spans: InMemorySpanExporter) -> None:
    with tracing.span("agent issue", {"keyferry.credential": "db", "skipped": None}):
        carried = tracing.traceparent()
        outer = tracing.trace_id()
        assert tracing.metadata() == (("traceparent", carried),)
    with tracing.span("BrokerService/Issue", parent=carried, kind="server") as server:
        server.set("keyferry.outcome", "issued")
        assert tracing.trace_id() == outer
        event = tracing.add_trace_id(None, "info", {"event": "lease issued"})
        assert event["trace_id"] == outer
    agent, broker = spans.get_finished_spans()
    assert broker.parent is not None
    assert broker.parent.span_id == agent.context.span_id
    assert broker.context.trace_id == agent.context.trace_id
    assert dict(agent.attributes or {}) == {"keyferry.credential": "db"}
    assert dict(broker.attributes or {}) == {"keyferry.outcome": "issued"}
    assert tracing.trace_id() is None  # outside every span


def test_an_error_is_recorded_by_type_and_reason_never_its_message(
    spans: InMemorySpanExporter,
) -> None:
    secret = "s3cr3t-password-in-a-message"
    with pytest.raises(LimitExceeded), tracing.span("policy"):
        raise LimitExceeded(f"over the limit {secret}")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {}) == {
        "error.type": "LimitExceeded",
        "keyferry.reason": "LIMIT_EXCEEDED",
    }
    assert secret not in repr(span.to_json())
    with tracing.span("long", {"keyferry.role": "r" * 1000}):
        pass
    assert len(str(spans.get_finished_spans()[-1].attributes["keyferry.role"])) == 256  # type: ignore[index]


def test_tracing_asked_for_without_the_packages_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from broker import tracing\n"
        "try:\n"
        "    tracing.start(tracing.TracingSettings(enabled=True), environ={})\n"
        "except tracing.TracingUnavailable as exc:\n"
        "    print(exc)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "install keyferry[tracing]" in found.stdout
    assert not tracing.enabled()
