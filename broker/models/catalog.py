"""Load a roles.yaml (a list of roles) and say precisely what is wrong with it.

Every problem names the file, the role (by name, else by its position), the line and the
field, and says what to write instead; all problems of a file are reported at once so ops
fix the file in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from broker.errors import InvalidRequest

from .roles import ROLE_TYPES, RoleSpec
from .yaml_source import YamlInvalid, YamlSource, read_yaml

_ROLE = TypeAdapter[RoleSpec](RoleSpec)
_KINDS = ", ".join(ROLE_TYPES)
WHOLE_FILE = "(file)"
WHOLE_ENTRY = "(entry)"


@dataclass(frozen=True)
class RoleProblem:
    source: str
    entry: int | None  # 1-based position in the list; None for a problem with the whole file
    role: str | None
    field: str
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.entry is None:
            return f"{where}: {self.problem}"
        who = f"role {self.role!r}" if self.role else f"role #{self.entry}"
        return f"{where}: {who}: {self.field}: {self.problem}"


class InvalidRoles(InvalidRequest):
    """A roles file that cannot be applied; `problems` lists every fault found in it."""

    def __init__(self, problems: Sequence[RoleProblem]) -> None:
        super().__init__(problems[0].field, problems[0].problem)
        self.problems = list(problems)
        self.message = "\n".join(str(p) for p in self.problems)
        self.args = (self.message,)


def load_roles(path: Path) -> list[RoleSpec]:
    """The roles of a YAML file, or InvalidRoles naming each problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRoles(
            [RoleProblem(str(path), None, None, WHOLE_FILE, f"cannot be read: {exc}")]
        ) from exc
    return parse_roles(text, str(path))


def parse_roles(text: str, source: str) -> list[RoleSpec]:
    """The roles of YAML text; `source` names it in messages (a path, or `-` for stdin)."""
    try:
        document = read_yaml(text)
    except YamlInvalid as exc:
        problem = f"is not valid YAML: {exc.problem}"
        raise InvalidRoles(
            [RoleProblem(source, None, None, WHOLE_FILE, problem, exc.line)]
        ) from exc
    data = document.data
    if not isinstance(data, list):
        raise InvalidRoles(
            [
                RoleProblem(
                    source,
                    None,
                    None,
                    WHOLE_FILE,
                    "must be a YAML list of roles, each a mapping starting `- name: ...` "
                    f"with `kind:` one of {_KINDS}",
                )
            ]
        )
    roles: list[RoleSpec] = []
    problems: list[RoleProblem] = []
    first_entry: dict[str, int] = {}
    for index, entry in enumerate(data):
        position = index + 1
        name = entry.get("name") if isinstance(entry, dict) else None
        label = name if isinstance(name, str) else None
        if label is not None and label in first_entry:
            problems.append(
                RoleProblem(
                    source,
                    position,
                    label,
                    "name",
                    f"is already used by role #{first_entry[label]}; role names must be "
                    "unique in a file",
                    document.line_of([index, "name"]),
                )
            )
        elif label is not None:
            first_entry[label] = position
        try:
            roles.append(_ROLE.validate_python(entry))
        except ValidationError as exc:
            problems.extend(
                _problem(source, index, label, entry, error, document=document)
                for error in exc.errors()
            )
    if problems:
        raise InvalidRoles(problems)
    return roles


def _problem(
    source: str,
    index: int,
    role: str | None,
    entry: Any,
    error: ErrorDetails,
    *,
    document: YamlSource,
) -> RoleProblem:
    """One validation error of the entry at `index`, at the line of its top-level field
    (the entry's first line when the field is not written)."""
    loc = list(error["loc"])
    if loc and loc[0] in ROLE_TYPES:
        loc = loc[1:]  # the discriminator's tag, not a field
    kind = entry.get("kind") if isinstance(entry, dict) else None
    model = ROLE_TYPES.get(kind) if isinstance(kind, str) else None
    top = str(loc[0]) if loc else WHOLE_ENTRY
    field = top + "".join(f"[{part}]" for part in loc[1:]) if loc else WHOLE_ENTRY
    kind_name = kind if isinstance(kind, str) else "?"
    problem = _sentence(error, model, top, kind_name)
    if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        field = top = "kind"
    line = document.line_of([index, top])
    return RoleProblem(source, index + 1, role, field, problem, line)


def _sentence(error: ErrorDetails, model: type[Any] | None, field: str, kind: str) -> str:
    """What is wrong, in words that say what to write instead."""
    kind_of = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    info = model.model_fields.get(field) if model is not None else None
    hint = info.description if info is not None and info.description else ""
    if kind_of == "union_tag_not_found":
        text = f"is required: the backend that issues this role, one of {_KINDS}"
    elif kind_of == "union_tag_invalid":
        text = f"{ctx.get('tag', value)!r} is not a backend kind; use one of {_KINDS}"
    elif kind_of == "missing":
        text = f"is required: {hint}" if hint else "is required"
    elif kind_of == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(field, known, n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        text = f"is not a field of a {kind} role{maybe}; its fields are: {', '.join(known)}"
    elif kind_of in {"model_type", "model_attributes_type", "dict_type"}:
        text = f"each role must be a mapping with at least name and kind (one of {_KINDS})"
    elif kind_of in {"value_error", "assertion_error"}:
        text = str(ctx.get("error", error["msg"]))
    elif kind_of == "literal_error":
        text = f"{value!r} is not allowed; use {ctx.get('expected')}"
    else:
        detail = f"{value!r} does not fit" if kind_of == "string_pattern_mismatch" else error["msg"]
        text = f"{detail}: {hint}" if hint else detail
    return text
