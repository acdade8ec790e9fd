"""One `--output table|json|yaml` for every command that prints records.

A command builds plain rows (str/int/float/bool/None/lists, never secret values) and
calls `emit`; the format is the user's choice, the columns the command's.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table


class Output(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table for people; json or yaml for scripts (same fields, stable names)",
    ),
]

Row = Mapping[str, Any]


def emit(
    rows: Sequence[Row],
    output: Output,
    *,
    columns: Sequence[str] | None = None,
    empty: str = "nothing to show",
) -> None:
    """Print rows as a table, a JSON array or a YAML list."""
    if output is Output.JSON:
        typer.echo(json.dumps([dict(r) for r in rows], indent=2, default=str))
        return
    if output is Output.YAML:
        typer.echo(yaml.safe_dump([dict(r) for r in rows], sort_keys=False), nl=False)
        return
    if not rows:
        typer.echo(empty)
        return
    names = list(columns) if columns is not None else list(rows[0].keys())
    table = Table(box=None, pad_edge=False, show_edge=False)
    for name in names:
        table.add_column(name.upper().replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(name)) for name in names))
    Console(width=200, soft_wrap=True).print(table)


def emit_one(record: Row, output: Output) -> None:
    """Print one record: `key: value` lines for people, an object for scripts."""
    if output is Output.JSON:
        typer.echo(json.dumps(dict(record), indent=2, default=str))
    elif output is Output.YAML:
        typer.echo(yaml.safe_dump(dict(record), sort_keys=False), nl=False)
    else:
        width = max((len(k) for k in record), default=0) + 1
        for key, value in record.items():
            typer.echo(f"{key + ':':<{width}} {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)
