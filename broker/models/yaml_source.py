"""YAML read together with where each value stands, so a problem can name its line.

The broker's settings (broker.settings) and a roles file (broker.models.catalog) both
report a fault as `file:line: field: what to fix`; this is the one reader and the one
walk from a field's location (pydantic's `loc`) to its line for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml


class YamlInvalid(ValueError):
    """The text is not YAML; `line` (1-based) is where the parser gave up, if it knows."""

    def __init__(self, error: yaml.YAMLError) -> None:
        super().__init__(str(error))
        mark = getattr(error, "problem_mark", None)
        self.line: int | None = mark.line + 1 if mark is not None else None
        self.problem: str = getattr(error, "problem", None) or str(error)


@dataclass(frozen=True)
class YamlSource:
    """The parsed value and the node tree it came from."""

    data: Any
    node: yaml.Node | None

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """The 1-based line of the deepest part of `loc` found in the text: a mapping key's
        line, or a list entry's first line; None when not even the first part is there."""
        node, line = self.node, None
        for part in (str(p) for p in loc):
            if isinstance(node, yaml.MappingNode):
                match = [
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == part
                ]
                if not match:
                    break
                line = match[0][0].start_mark.line + 1
                node = match[0][1]
            elif (
                isinstance(node, yaml.SequenceNode)
                and part.isdigit()
                and int(part) < len(node.value)
            ):
                node = node.value[int(part)]
                line = node.start_mark.line + 1
            else:
                break
        return line


def read_yaml(text: str) -> YamlSource:
    """`text` parsed (safe loader), or YamlInvalid."""
    try:
        return YamlSource(yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise YamlInvalid(exc) from exc
