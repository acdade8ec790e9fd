"""Write docs/reference/cli.md from the `keyferry` Typer app: every command, its usage,
options, examples and exit codes, exactly as `--help` has them.

    python -m tests.tools.clidoc          # write the page
    python -m tests.tools.clidoc --check  # fail when the committed page is stale (CI)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import typer.main

from broker.cli.main import app

from .docgen import ROOT, cell, escape_outside_code, run

TARGET = ROOT / "docs" / "reference" / "cli.md"
PROG = "keyferry"


@dataclass(frozen=True)
class Command:
    path: str  # "keyferry clusters register"
    command: Any  # Typer's click command (Typer vendors its own click)
    context: Any

    @property
    def is_group(self) -> bool:
        return hasattr(self.command, "list_commands")


def commands() -> Iterator[Command]:
    """Every command of the `keyferry` app, depth first, in the order `--help` lists them."""
    root = typer.main.get_command(app)

    def walk(command: Any, path: str, parent: Any) -> Iterator[Command]:
        context = command.context_class(command, info_name=path.rsplit(" ", 1)[-1], parent=parent)
        yield Command(path, command, context)
        if hasattr(command, "list_commands"):
            for name in command.list_commands(context):
                yield from walk(command.get_command(context, name), f"{path} {name}", context)

    yield from walk(root, PROG, None)


def paragraphs(text: str) -> list[str]:
    """Help text as Markdown: indented lines (the examples) become console blocks."""
    out: list[str] = []
    block: list[str] = []
    for chunk in text.strip().split("\n\n") if text.strip() else []:
        if chunk.startswith("  "):
            block += [line.strip() for line in chunk.splitlines()]
            continue
        if block:
            out.append("```console\n" + "\n".join(block) + "\n```")
            block = []
        out.append(escape_outside_code(" ".join(line.strip() for line in chunk.splitlines())))
    if block:
        out.append("```console\n" + "\n".join(block) + "\n```")
    return out


def render_command(entry: Command) -> list[str]:
    command, context = entry.command, entry.context
    depth = min(entry.path.count(" ") + 1, 4)
    lines = [f"{'#' * (depth + 1)} `{entry.path}`", ""]
    lines += spaced(paragraphs(command.help or ""))
    pieces = " ".join(command.collect_usage_pieces(context))
    lines += ["```", f"{entry.path} {pieces}".rstrip(), "```", ""]
    records = [
        record
        for param in command.get_params(context)
        if not getattr(param, "hidden", False)
        and (record := param.get_help_record(context)) is not None
    ]
    if records:
        lines += ["| option | description |", "|---|---|"]
        lines += [
            f"| `{cell(names)}` | {escape_outside_code(cell(text))} |" for names, text in records
        ]
        lines.append("")
    if entry.is_group:
        subs = command.list_commands(context)
        lines += [
            "Subcommands: "
            + ", ".join(f"[`{name}`](#{anchor(f'{entry.path} {name}')})" for name in subs),
            "",
        ]
    lines += spaced(paragraphs(command.epilog or ""))
    return lines


def spaced(blocks: list[str]) -> list[str]:
    return [line for block in blocks for line in (block, "")]


def anchor(path: str) -> str:
    """The id MkDocs gives a heading `` `keyferry a b` ``."""
    return path.replace(" ", "-")


def render() -> str:
    out = [
        "# CLI reference",
        "",
        "Generated from the `keyferry` command by `python -m tests.tools.clidoc`: edit the help "
        "texts in `broker/cli/` (and `injector/*/cli.py`), not this page. `keyferry COMMAND "
        "--help` prints the same. Exit codes of every command: [exit codes](exit-codes.md); "
        "completion: [shell completion](completion.md).",
        "",
    ]
    for entry in commands():
        out += render_command(entry)
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main() -> None:
    run(TARGET, render, "tests.tools.clidoc", __doc__)


if __name__ == "__main__":
    main()
