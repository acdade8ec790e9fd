"""The agent spec, read once from `KEYFERRY_AGENT_SPEC` and validated."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from injector.contract import AGENT_SPEC_ENV, AgentSpec

from .errors import SpecError


def load_spec(environ: Mapping[str, str]) -> AgentSpec:
    """The validated spec; SpecError naming the variable and the first bad field."""
    raw = environ.get(AGENT_SPEC_ENV)
    if not raw:
        raise SpecError(f"{AGENT_SPEC_ENV} is not set; the keyferry webhook sets it in the pod")
    try:
        return AgentSpec.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(the document)"
        raise SpecError(f"{AGENT_SPEC_ENV} is invalid at {where}: {first['msg']}") from exc
