"""When tracing is on, and where spans go: the broker's `tracing:` settings block, and the
standard OpenTelemetry variables (the only configuration the agent has).

Off by default. On when `tracing.enabled` is true, or, when the settings leave it unset,
when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a
collector. `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn it off whatever
else is set. Everything else the OpenTelemetry SDK reads itself (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_BSP_*`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = Field(
        default=None,
        description="export traces over OTLP: true or false; unset (the default) follows "
        "the environment: on when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set",
    )
    endpoint: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^(https?://)?[A-Za-z0-9.:\[\]_-]+(:[0-9]+)?/?$",
        description="the collector's OTLP gRPC endpoint, like http://otel-collector:4317 "
        "(http:// sends in plain text, https:// over TLS); unset: OTEL_EXPORTER_OTLP_ENDPOINT, "
        "else http://localhost:4317",
    )
    service_name: str = Field(
        default="keyferry-broker",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the service.name of the broker's spans (OTEL_SERVICE_NAME wins)",
    )


def tracing_wanted(settings: TracingSettings, environ: Mapping[str, str]) -> bool:
    """Whether this process exports traces (see the module doc for the rules)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if settings.enabled is not None:
        return settings.enabled
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)
