"""The audit trail: records newest first, filtered by action, principal, lease and time,
a page at a time, and the broker's verification of the chain against its checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from broker.api.v1 import audit_pb2
from broker.models import parse_duration

from ..admin import Refused
from .common import FieldInvalid, admin, render, values, when

FILTERS = ("action", "principal", "lease", "since")
MAX_TOKEN = 32


async def trail(request: Request) -> Response:
    query = dict(request.query_params)
    filled = {name: query.get(name, "") for name in FILTERS}
    context: dict[str, Any] = {"page": "audit", "fields": filled}
    client = admin(request)
    try:
        verify = await client.verify()
        verified = {
            "ok": verify.ok,
            "records": verify.records,
            "checkpoints": verify.checkpoints_verified,
            "head": verify.head,
            "damage": f"{verify.damage_kind}: {verify.damage_detail}" if not verify.ok else "",
        }
    except Refused as refusal:
        verified = {"refused": refusal.message}
    try:
        request_message = _request(query)
        found = await client.audit_records(request_message)
    except FieldInvalid as invalid:
        return render(
            request, "audit.html", 400, refused=str(invalid), verified=verified, **context
        )
    except Refused as refusal:
        return render(request, "audit.html", refused=refusal.message, verified=verified, **context)
    rows = [
        {
            "seq": entry.seq,
            "time": when(entry.time),
            "principal": f"{entry.principal_kind}/{entry.principal}",
            "action": entry.action,
            "decision": entry.decision,
            "reason": entry.reason,
            "lease": entry.lease_id,
            "where": "/".join(p for p in (entry.cluster, entry.namespace, entry.pod) if p),
            "policies": ", ".join(entry.policy_ids),
        }
        for entry in found.records
    ]
    return render(
        request,
        "audit.html",
        rows=rows,
        verified=verified,
        next_token=found.next_page_token,
        **context,
    )


def _request(query: dict[str, str]) -> audit_pb2.ListAuditRecordsRequest:
    token = query.get("page_token", "")
    if len(token) > MAX_TOKEN:
        raise FieldInvalid("page_token: follow the page's own link")
    message = audit_pb2.ListAuditRecordsRequest(
        actions=values(query, "action"),
        principal=query.get("principal", "").strip()[:254],
        lease_id=query.get("lease", "").strip()[:254],
        page_size=100,
        page_token=token,
    )
    since = query.get("since", "").strip()
    if since:
        try:
            at = datetime.now(UTC) - parse_duration(since)
        except ValueError:
            raise FieldInvalid("since: a duration ago, like 30m or 2h") from None
        message.since.FromDatetime(at)
    return message
