"""What `keyferry rotate` and `keyferry revoke` share: the selector options, the progress
display while the broker streams outcomes, and the summary at the end.

On a terminal with `-o table` a progress bar runs; otherwise one plain line per lease as
it finishes (on stderr with `-o json|yaml`, so stdout stays one parseable document).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from broker.api.v1 import rotation_pb2

from .exits import CONFIG, FAILED, NOTHING_SELECTED
from .output import Output, emit, emit_one

Clusters = Annotated[
    list[str] | None, typer.Option("--cluster", help="cluster name; repeat for several")
]
Namespaces = Annotated[
    list[str] | None, typer.Option("--namespace", "-n", help="namespace; repeat for several")
]
ServiceAccounts = Annotated[
    list[str] | None,
    typer.Option("--service-account", help="service account name; repeat for several"),
]
Pods = Annotated[list[str] | None, typer.Option("--pod", help="pod name; repeat for several")]
Roles = Annotated[
    list[str] | None, typer.Option("--role", help="keyferry role name; repeat for several")
]
Leases = Annotated[list[str] | None, typer.Option("--lease", help="lease id; repeat for several")]
All = Annotated[
    bool, typer.Option("--all", help="select every live lease (only alone: no other selector)")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="list what would change; change nothing")]
Concurrency = Annotated[
    int | None,
    typer.Option(
        min=1, max=64, help="leases handled at once (default: the broker's rotation.concurrency)"
    ),
]

SELECTOR_HELP = (
    "Selectors: --cluster, --namespace, --service-account, --pod, --role and --lease, each "
    "repeatable; different options combine with AND, repeats of one option with OR. At least "
    "one is required; --all alone selects every live lease."
)
NAMES = {
    rotation_pb2.OUTCOME_PLANNED: "planned",
    rotation_pb2.OUTCOME_ROTATED: "rotated",
    rotation_pb2.OUTCOME_ALREADY_ROTATED: "already rotated",
    rotation_pb2.OUTCOME_REVOKED: "revoked",
    rotation_pb2.OUTCOME_QUEUED: "queued for retry",
    rotation_pb2.OUTCOME_FAILED: "failed",
}


def selector_message(
    *,
    clusters: list[str] | None,
    namespaces: list[str] | None,
    service_accounts: list[str] | None,
    pods: list[str] | None,
    roles: list[str] | None,
    leases: list[str] | None,
    everything: bool,
) -> rotation_pb2.LeaseSelector:
    """The selector asked for; exit 2 when none was given (the broker would refuse it)."""
    given = any((clusters, namespaces, service_accounts, pods, roles, leases))
    if not given and not everything:
        typer.echo(
            "select leases with at least one of --cluster, --namespace, --service-account, "
            "--pod, --role, --lease; to select every live lease say --all",
            err=True,
        )
        raise typer.Exit(CONFIG)
    return rotation_pb2.LeaseSelector(
        clusters=clusters or [],
        namespaces=namespaces or [],
        service_accounts=service_accounts or [],
        pods=pods or [],
        roles=roles or [],
        lease_ids=leases or [],
        all=everything,
    )


# The options `selected` puts in a command's signature, in this order: (parameter, annotation,
# default, selector_message keyword).
OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("cluster", Clusters, None, "clusters"),
    ("namespace", Namespaces, None, "namespaces"),
    ("service_account", ServiceAccounts, None, "service_accounts"),
    ("pod", Pods, None, "pods"),
    ("role", Roles, None, "roles"),
    ("lease", Leases, None, "leases"),
    ("everything", All, False, "everything"),
)


def selected(command: Callable[..., None]) -> Callable[..., None]:
    """The command with the selector options (--cluster ... --all) in place of its
    keyword-only `selector` parameter, which it then receives as a LeaseSelector made by
    `selector_message` (so an empty selection exits 2 before the command runs)."""
    signature = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name == "selector":
            parameters.extend(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
                for name, annotation, default, _ in OPTIONS
            )
        else:
            parameters.append(parameter)

    @functools.wraps(command)
    def wrapper(**given: Any) -> None:
        chosen = {keyword: given.pop(name) for name, _, _, keyword in OPTIONS}
        command(selector=selector_message(**chosen), **given)

    wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters} | {
        "return": signature.return_annotation
    }
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper


Event = rotation_pb2.RotateSelectedResponse | rotation_pb2.RevokeSelectedResponse


@dataclass
class Run:
    """What a stream said, gathered for the final output."""

    verb: str
    output: Output
    matched: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: rotation_pb2.SelectionSummary | None = None

    async def follow(self, stream: AsyncIterable[Event]) -> None:
        """Read the broker's stream to its end, showing progress as it comes."""
        progress: Progress | None = None
        task = None
        try:
            async for event in stream:
                kind = event.WhichOneof("event")
                if kind == "plan":
                    self.matched = event.plan.matched
                    if self._bar() and self.matched:
                        progress = _progress_bar()
                        progress.start()
                        task = progress.add_task(self.verb, total=self.matched)
                elif kind == "lease":
                    row = _row(event.lease)
                    self.rows.append(row)
                    if progress is not None and task is not None:
                        progress.advance(task)
                    elif row["outcome"] != "planned":
                        typer.echo(_line(row), err=self.output is not Output.TABLE)
                elif kind == "summary":
                    self.summary = event.summary
        finally:
            if progress is not None:
                progress.stop()

    def finish(self, pending_means: str) -> None:
        """Print the outcome and exit with the documented code."""
        summary = self.summary or rotation_pb2.SelectionSummary(matched=self.matched)
        if summary.matched == 0:
            typer.echo(
                "the selector matched no lease; nothing was changed (exit code "
                f"{NOTHING_SELECTED})",
                err=True,
            )
            if self.output is not Output.TABLE:
                emit_one(_document(summary, self.rows), self.output)
            raise typer.Exit(NOTHING_SELECTED)
        if self.output is not Output.TABLE:
            emit_one(_document(summary, self.rows), self.output)
        elif summary.dry_run:
            emit(self.rows, self.output, columns=COLUMNS)
            typer.echo(f"dry run: {summary.matched} lease(s) would be {self.verb}; nothing changed")
        else:
            typer.echo(
                f"{self.verb} {summary.done}, failed {summary.failed}, pending {summary.pending} "
                f"({pending_means}) of {summary.matched} selected"
            )
        if summary.failed:
            raise typer.Exit(FAILED)

    def _bar(self) -> bool:
        return self.output is Output.TABLE and sys.stdout.isatty()


COLUMNS = ("lease", "cluster", "namespace", "service_account", "pod", "role", "generation")


def _row(outcome: rotation_pb2.LeaseOutcome) -> dict[str, Any]:
    lease = outcome.lease
    row: dict[str, Any] = {
        "lease": lease.id,
        "cluster": lease.cluster,
        "namespace": lease.namespace,
        "service_account": lease.service_account,
        "pod": lease.pod,
        "role": lease.role,
        "generation": lease.generation,
        "outcome": NAMES.get(outcome.outcome, "unknown"),
    }
    if outcome.HasField("successor"):
        row["new_lease"] = outcome.successor.id
        row["new_generation"] = outcome.successor.generation
    if outcome.error:
        row["error"] = outcome.error
    return row


def _line(row: dict[str, Any]) -> str:
    text = f"lease {row['lease']} {row['outcome']}"
    if "new_lease" in row:
        text += f": new lease {row['new_lease']} (generation {row['new_generation']})"
    if "error" in row:
        text += f": {row['error']}"
    return f"{text} [{row['cluster']}/{row['namespace']}/{row['pod']}]"


def _document(summary: rotation_pb2.SelectionSummary, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "matched": summary.matched,
        "done": summary.done,
        "failed": summary.failed,
        "pending": summary.pending,
        "dry_run": summary.dry_run,
        "leases": rows,
    }


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
