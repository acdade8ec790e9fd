"""Evaluate Cedar policies (cedarpy) for the broker: validated at start, default deny.

A policy's name in decisions and audit records is its `@id("...")` annotation, or
Cedar's positional id (`policy0`, ...) when it has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import cedarpy

from broker.errors import KeyferryError

from .entities import Action, Principal, Resource
from .lint import OpenPermit, open_permits

SCHEMA = (files("broker.policy") / "schema.cedarschema").read_text()
# Parsed once: handing cedarpy the schema's text makes it parse the schema on every
# decision, which was most of a decision's time (about 1 ms of 1.1 ms; issue 9 profile).
_PARSED_SCHEMA = cedarpy.Schema.from_str(SCHEMA)


class PolicyInvalid(KeyferryError):
    """A policy file does not parse or does not fit keyferry's schema: the broker must not start."""

    reason = "INVALID_FIELD"

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        listed = "\n  ".join(problems)
        super().__init__(
            f"policy file {source} is invalid:\n  {listed}\n"
            "Fix the policy (see docs/examples/policies.cedar) and start again."
        )
        self.source = source


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy_ids: tuple[str, ...]
    errors: tuple[str, ...] = ()


class PolicyEngine:
    def __init__(self, text: str, source: str = "<policies>") -> None:
        self._names = _policy_names(text, source)
        result = cedarpy.validate_policies(text, SCHEMA)
        if not result.validation_passed:
            raise PolicyInvalid(
                source,
                [
                    f"{self._names.get(err.policy_id, err.policy_id)}: {err.error}"
                    for err in result.errors
                ],
            )
        self._policies = cedarpy.PolicySet.from_str(text)
        self._text = text
        self.source = source

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> PolicyEngine:
        chosen = list(paths)
        for path in chosen:  # validate one by one so an error names its own file
            cls(path.read_text(), str(path))
        return cls("\n".join(path.read_text() for path in chosen), ", ".join(map(str, chosen)))

    def open_permits(self) -> list[OpenPermit]:
        """The permits that let workloads of any cluster in (lint.py)."""
        return open_permits(self._text)

    @property
    def policy_names(self) -> tuple[str, ...]:
        return tuple(self._names.values())

    def decide(
        self,
        principal: Principal,
        action: Action,
        resource: Resource,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        entities = {
            json.dumps(e["uid"], sort_keys=True): e
            for e in [*principal.entities(), *resource.entities()]
        }
        request = {
            "principal": principal.uid(),
            "action": action.uid(),
            "resource": resource.uid(),
            "context": dict(context or {}),
        }
        result = cedarpy.is_authorized(
            request, self._policies, list(entities.values()), _PARSED_SCHEMA
        )
        reasons = tuple(self._names.get(pid, pid) for pid in result.diagnostics.reasons)
        return Decision(result.allowed, reasons, tuple(map(str, result.diagnostics.errors)))


def _policy_names(text: str, source: str) -> dict[str, str]:
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise PolicyInvalid(source, [f"does not parse: {exc}"]) from exc
    names: dict[str, str] = {}
    for pid, policy in parsed.get("staticPolicies", {}).items():
        annotations = policy.get("annotations") or {}
        names[pid] = annotations.get("id", pid)
    return names
