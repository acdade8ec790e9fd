"""Traces as Jaeger's query API returns them (tests/bed/jaeger.py), and the traced processes
of the tracing tests: `keyferry broker serve` exporting to the bed's Jaeger, a real
`keyferry agent run` process for one pod, the admin CLI run as a process.

A span here is Jaeger's JSON: spanID, operationName, references (CHILD_OF: the parent),
processID (-> serviceName), tags (key, value)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bed.jaeger import JaegerServer

Span = dict[str, Any]
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # ms between batches (default 5 s)


def traced_env(jaeger: JaegerServer, **extra: str) -> dict[str, str]:
    """This process's environment with tracing on, exporting to `jaeger` quickly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_endpoint, **FAST_EXPORT, **extra}


@dataclass(frozen=True)
class Trace:
    raw: dict[str, Any]

    @property
    def spans(self) -> list[Span]:
        return list(self.raw["spans"])

    def service(self, span: Span) -> str:
        return str(self.raw["processes"][span["processID"]]["serviceName"])

    def services(self) -> set[str]:
        return {self.service(s) for s in self.spans}

    def parent(self, span: Span) -> str | None:
        refs = [r for r in span.get("references") or [] if r["refType"] == "CHILD_OF"]
        return str(refs[0]["spanID"]) if refs else None

    def named(self, name: str, service: str | None = None) -> list[Span]:
        return [
            s
            for s in self.spans
            if s["operationName"] == name and (service is None or self.service(s) == service)
        ]

    def one(self, name: str, service: str) -> Span:
        found = self.named(name, service)
        assert len(found) == 1, f"{len(found)} spans {name!r} of {service} in {self.names()}"
        return found[0]

    def names(self) -> list[tuple[str, str]]:
        return sorted((self.service(s), s["operationName"]) for s in self.spans)

    def below(self, top: Span) -> list[Span]:
        """Every span under `top` (its children, theirs, ...)."""
        children: dict[str, list[Span]] = {}
        for span in self.spans:
            parent = self.parent(span)
            if parent is not None:
                children.setdefault(parent, []).append(span)
        found, todo = [], list(children.get(top["spanID"], []))
        while todo:
            span = todo.pop()
            found.append(span)
            todo.extend(children.get(span["spanID"], []))
        return found


def tag(span: Span, key: str) -> Any:
    return next((t["value"] for t in span.get("tags") or [] if t["key"] == key), None)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log file (lines that are not JSON are skipped; none while the
    file does not exist yet)."""
    found: list[dict[str, Any]] = []
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


@dataclass
class AgentProcess:
    """`keyferry agent run` for one pod, its JSON log lines in `log`."""

    process: subprocess.Popen[bytes]
    log: Path
    directory: Path

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in json_lines(self.log) if line.get("event") == event]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
