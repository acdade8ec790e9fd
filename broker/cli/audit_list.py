"""`keyferry audit list` and `keyferry audit verify` without --config: the audit trail read
and verified through the broker's admin listener (AuditService), as the operator of the
CLI context; no access to the broker's machine needed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from google.protobuf import timestamp_pb2

from broker.api.v1 import audit_pb2, audit_pb2_grpc
from broker.models import parse_duration

from .admin_channel import TIMEOUT, call_admin
from .exits import CONFIG, FAILED
from .output import Output, emit, emit_one

if TYPE_CHECKING:
    from broker.api.v1.audit_pb2_grpc import AuditServiceAsyncStub

T = TypeVar("T")
COLUMNS = ("seq", "time", "principal", "action", "decision", "reason", "lease_id", "target")


def parse_time(option: str, text: str, now: datetime) -> timestamp_pb2.Timestamp:
    """`30m` (that long ago) or an ISO-8601 time; exit 2 naming the option otherwise."""
    try:
        at = now - parse_duration(text)
    except ValueError:
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            typer.echo(
                f"{option}: {text!r} is neither a duration ago (like 30m, 2h) nor an ISO-8601 "
                "time (like 2026-12-07T10:00:00Z)",
                err=True,
            )
            raise typer.Exit(CONFIG) from None
        at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def entry_row(entry: audit_pb2.AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "time": entry.time.ToDatetime(tzinfo=UTC).isoformat(),
        "principal": f"{entry.principal_kind}/{entry.principal}",
        "action": entry.action,
        "decision": entry.decision or None,
        "reason": entry.reason or None,
        "lease_id": entry.lease_id or None,
        "cluster": entry.cluster or None,
        "namespace": entry.namespace or None,
        "pod": entry.pod or None,
        "role": entry.role or None,
        "policy_ids": list(entry.policy_ids),
        "request_id": entry.request_id or None,
        "target": entry.target or None,
        "count": entry.count or None,
    }


def list_records(
    request: audit_pb2.ListAuditRecordsRequest, context: Path | None, output: Output
) -> None:
    reply = _call(context, lambda stub: stub.ListAuditRecords(request, timeout=TIMEOUT))
    emit([entry_row(e) for e in reply.records], output, columns=COLUMNS, empty="no records")
    if reply.next_page_token:
        typer.echo(f"more: --page-token {reply.next_page_token}", err=True)


def verify_remote(context: Path | None, output: Output) -> None:
    request = audit_pb2.VerifyAuditRequest()
    reply = _call(context, lambda stub: stub.VerifyAudit(request, timeout=TIMEOUT))
    summary: dict[str, Any] = {
        "ok": reply.ok,
        "records": reply.records,
        "checkpoints_verified": reply.checkpoints_verified,
        "head": reply.head,
    }
    if not reply.ok:
        summary["damage"] = {
            "kind": reply.damage_kind,
            "index": None if reply.damage_index < 0 else reply.damage_index,
            "detail": reply.damage_detail,
        }
    emit_one(summary, output)
    if not reply.ok:
        raise typer.Exit(FAILED)


def _call(context: Path | None, call: Callable[[AuditServiceAsyncStub], Awaitable[T]]) -> T:
    return call_admin(context, audit_pb2_grpc.AuditServiceStub, call)
