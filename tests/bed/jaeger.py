"""The bed's trace receiver: Jaeger (v2, an OpenTelemetry Collector distribution) built from
its Go module, keeping spans in memory. OTLP gRPC in (`otlp_endpoint`), Jaeger's query API
out (`trace`, `traces`): what keyferry exported is read back as Jaeger stored it.

Every port is a free loopback port (no 4317 or 16686 taken from another process); Jaeger's
own telemetry, sampling and UI extras are left out of the config.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import yaml

from .gobuild import JAEGER
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .workspace import Workspace

JAEGER_VERSION = "v1.75.0"  # the module's tag; the binary calls itself Jaeger v2


@dataclass
class JaegerServer:
    otlp_port: int
    query_port: int
    health_port: int
    process: ManagedProcess

    @property
    def otlp_endpoint(self) -> str:
        """Where OTLP gRPC exporters send (OTEL_EXPORTER_OTLP_ENDPOINT), in plain text."""
        return f"http://{LOOPBACK}:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://{LOOPBACK}:{self.query_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{self.health_port}/status", timeout=2
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.query_url}{path}", timeout=5) as response:  # noqa: S310 (loopback http)
            return json.load(response)

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace as Jaeger's query API returns it (spans, processes), or None while
        Jaeger does not have it."""
        try:
            found = self._get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        data = found.get("data") or []
        return data[0] if data else None

    def traces(self, service: str, limit: int = 100) -> list[dict[str, Any]]:
        """The latest traces with spans from `service`."""
        query = urllib.parse.urlencode({"service": service, "limit": limit, "lookback": "1h"})
        return list(self._get(f"/api/traces?{query}").get("data") or [])

    def describe(self) -> str:
        return (
            f"OTLP {self.otlp_endpoint}, query {self.query_url} (Jaeger {JAEGER_VERSION}, memory)"
        )

    def stop(self) -> None:
        self.process.stop()


def config(otlp_port: int, query_port: int, query_grpc_port: int, health_port: int) -> str:
    at = LOOPBACK
    return yaml.safe_dump(
        {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": [],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 10000}}}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"{at}:{query_port}"},
                    "grpc": {"endpoint": f"{at}:{query_grpc_port}"},
                },
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"{at}:{health_port}"}},
            },
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"{at}:{otlp_port}"}}}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }
    )


def start_jaeger(ws: Workspace, name: str = "jaeger") -> JaegerServer:
    binary = JAEGER.binary("jaeger")
    folder = ws.folder(name)
    ports = [free_port() for _ in range(4)]
    otlp_port, query_port, query_grpc_port, health_port = ports
    path = folder / "config.yaml"
    path.write_text(config(otlp_port, query_port, query_grpc_port, health_port))
    process = ManagedProcess(name, [str(binary), "--config", f"file:{path}"], ws.log(name))
    server = JaegerServer(otlp_port, query_port, health_port, process)
    process.start()
    process.wait_until(server.healthy, "healthy")
    return server
