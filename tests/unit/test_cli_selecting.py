"""`keyferry rotate`/`revoke`'s reading of the broker's progress stream: plain lines off a
terminal, one document for -o json, and the documented exit codes."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator

import pytest
import typer

from broker.api.v1 import rotation_pb2
from broker.cli.exits import CONFIG, FAILED, NOTHING_SELECTED
from broker.cli.output import Output
from broker.cli.selecting import Run, selected, selector_message

Response = rotation_pb2.RotateSelectedResponse


def _lease(number: int) -> rotation_pb2.SelectedLease:
    return rotation_pb2.SelectedLease(
        id=f"l{number}", cluster="a", namespace="orders", pod=f"p{number}", generation=1
    )


def _stream(*events: Response) -> AsyncIterator[Response]:
    async def stream() -> AsyncIterator[Response]:
        for event in events:
            yield event

    return stream()


def _outcome(number: int, outcome: rotation_pb2.Outcome.ValueType, error: str = "") -> Response:
    message = rotation_pb2.LeaseOutcome(lease=_lease(number), outcome=outcome, error=error)
    if outcome == rotation_pb2.OUTCOME_ROTATED:
        message.successor.CopyFrom(rotation_pb2.SelectedLease(id=f"n{number}", generation=2))
    return Response(lease=message)


def _summary(matched: int, done: int, failed: int, pending: int) -> Response:
    summary = rotation_pb2.SelectionSummary(
        matched=matched, done=done, failed=failed, pending=pending
    )
    return Response(summary=summary)


def test_plain_lines_then_the_summary_and_exit_1_when_a_lease_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = Run("rotated", Output.TABLE)
    events = _stream(
        Response(plan=rotation_pb2.SelectionPlan(matched=2)),
        _outcome(1, rotation_pb2.OUTCOME_ROTATED),
        _outcome(2, rotation_pb2.OUTCOME_FAILED, "Vault refused"),
        _summary(2, 1, 1, 1),
    )
    asyncio.run(run.follow(events))
    with pytest.raises(typer.Exit) as ended:
        run.finish("waiting for the Ack")
    assert ended.value.exit_code == FAILED
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "lease l1 rotated: new lease n1 (generation 2) [a/orders/p1]"
    assert out[1] == "lease l2 failed: Vault refused [a/orders/p2]"
    assert out[2].startswith("rotated 1, failed 1, pending 1 (waiting for the Ack) of 2")


def test_json_is_one_document_on_stdout() -> None:
    run = Run("rotated", Output.JSON)
    events = _stream(
        Response(plan=rotation_pb2.SelectionPlan(matched=1)),
        _outcome(1, rotation_pb2.OUTCOME_ROTATED),
        _summary(1, 1, 0, 1),
    )
    asyncio.run(run.follow(events))
    assert [row["outcome"] for row in run.rows] == ["rotated"]
    assert run.rows[0]["new_lease"] == "n1"


def test_nothing_matched_exits_4_and_no_selector_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = Run("revoked", Output.JSON)
    asyncio.run(
        run.follow(_stream(Response(plan=rotation_pb2.SelectionPlan()), _summary(0, 0, 0, 0)))
    )
    with pytest.raises(typer.Exit) as ended:
        run.finish("queued")
    assert ended.value.exit_code == NOTHING_SELECTED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["matched"] == 0
    assert "matched no lease" in captured.err
    with pytest.raises(typer.Exit) as none:
        selector_message(
            clusters=None,
            namespaces=None,
            service_accounts=None,
            pods=None,
            roles=None,
            leases=None,
            everything=False,
        )
    assert none.value.exit_code == CONFIG


def test_selected_gives_the_command_the_options_as_one_selector() -> None:
    got: list[rotation_pb2.LeaseSelector] = []

    @selected
    def command(*, selector: rotation_pb2.LeaseSelector, dry_run: bool = False) -> None:
        assert dry_run
        got.append(selector)

    names = list(inspect.signature(command).parameters)
    assert names == [
        "cluster",
        "namespace",
        "service_account",
        "pod",
        "role",
        "lease",
        "everything",
        "dry_run",
    ]
    command(
        cluster=["a"],
        namespace=None,
        service_account=None,
        pod=["p"],
        role=None,
        lease=None,
        everything=False,
        dry_run=True,
    )
    assert got == [rotation_pb2.LeaseSelector(clusters=["a"], pods=["p"])]
    with pytest.raises(typer.Exit) as ended:
        command(
            cluster=None,
            namespace=None,
            service_account=None,
            pod=None,
            role=None,
            lease=None,
            everything=False,
            dry_run=True,
        )
    assert ended.value.exit_code == CONFIG
