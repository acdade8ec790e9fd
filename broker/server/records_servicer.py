"""AuditService and LeasesService on the admin listener: the operator (named by its client
certificate) reads the audit trail, has it verified, reads the activity per minute, and
lists and counts leases by selector. Reading only; the flows decide and audit each call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from broker.api.v1 import audit_pb2, audit_pb2_grpc, leases_pb2, leases_pb2_grpc, rotation_pb2
from broker.audit import Activity, AuditRecord, VerifyReport
from broker.service import AuditReading, LeaseListing, audit_requests, lease_requests
from broker.store import LeaseRecord

from . import convert
from .interceptors import current_call
from .operators import operator_of

Context = grpc.aio.ServicerContext[Any, Any]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, reading: AuditReading) -> None:
        self._reading = reading

    async def ListAuditRecords(
        self, request: audit_pb2.ListAuditRecordsRequest, context: Context
    ) -> audit_pb2.ListAuditRecordsResponse:
        wanted = audit_requests.record_filter(
            list(request.actions),
            request.principal or None,
            request.lease_id or None,
            _time(request, "since"),
            _time(request, "until"),
        )
        page = await self._reading.list_records(
            operator_of(context),
            wanted,
            before=audit_requests.page_token(request.page_token),
            size=audit_requests.page_size(request.page_size or None),
            request_id=current_call().request_id,
        )
        token = "" if page.next_before is None else str(page.next_before)
        return audit_pb2.ListAuditRecordsResponse(
            records=[audit_entry(record) for record in page.records], next_page_token=token
        )

    async def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: Context
    ) -> audit_pb2.VerifyAuditResponse:
        report = await self._reading.verify(operator_of(context), current_call().request_id)
        return verify_response(report)

    async def AuditActivity(
        self, request: audit_pb2.AuditActivityRequest, context: Context
    ) -> audit_pb2.AuditActivityResponse:
        found = await self._reading.activity(
            operator_of(context), request.hours or None, current_call().request_id
        )
        return activity_response(found)


class LeasesServicer(leases_pb2_grpc.LeasesServiceServicer):
    def __init__(self, listing: LeaseListing) -> None:
        self._listing = listing

    async def ListLeases(
        self, request: leases_pb2.ListLeasesRequest, context: Context
    ) -> leases_pb2.ListLeasesResponse:
        selector = convert.lease_selector(request.selector)
        states = lease_requests.lease_states(list(request.states))
        page = await self._listing.list_page(
            operator_of(context),
            selector,
            states,
            after=lease_requests.page_token(request.page_token),
            size=lease_requests.page_size(request.page_size or None),
            request_id=current_call().request_id,
        )
        return leases_pb2.ListLeasesResponse(
            leases=[listed_lease(lease) for lease in page.leases],
            next_page_token=page.next_after or "",
        )

    async def CountLeases(
        self, request: leases_pb2.CountLeasesRequest, context: Context
    ) -> leases_pb2.CountLeasesResponse:
        selector = convert.lease_selector(request.selector)
        states = lease_requests.lease_states(list(request.states))
        group_by = lease_requests.group_fields(list(request.group_by))
        counted = await self._listing.count(
            operator_of(context), selector, states, group_by, current_call().request_id
        )
        return leases_pb2.CountLeasesResponse(
            total=counted.total,
            groups=[
                leases_pb2.LeaseGroup(
                    values=[group.values[name] for name in group_by], leases=group.leases
                )
                for group in counted.groups
            ],
            truncated=counted.truncated,
        )


def _time(request: audit_pb2.ListAuditRecordsRequest, field: str) -> datetime | None:
    if not request.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def audit_entry(record: AuditRecord) -> audit_pb2.AuditEntry:
    return audit_pb2.AuditEntry(
        seq=record.seq,
        time=_stamp(record.time),
        principal_kind=record.who.kind.value,
        principal=record.who.name,
        action=record.action,
        decision=record.decision.value if record.decision else "",
        reason=record.reason or "",
        cluster=record.cluster or "",
        namespace=record.namespace or "",
        pod=record.pod or "",
        role=record.role or "",
        lease_id=record.lease_id or "",
        generation=record.generation or 0,
        policy_ids=list(record.policy_ids),
        request_id=record.request_id or "",
        target=record.target or "",
        count=record.count or 0,
        hash=record.hash,
        line=record.line().decode().removesuffix("\n"),
    )


def verify_response(report: VerifyReport) -> audit_pb2.VerifyAuditResponse:
    damage = report.damage
    return audit_pb2.VerifyAuditResponse(
        ok=report.ok,
        records=report.records,
        checkpoints_verified=report.checkpoints_verified,
        head=report.head,
        damage_kind="" if damage is None else damage.kind.value,
        damage_index=-1 if damage is None or damage.index is None else damage.index,
        damage_detail="" if damage is None else damage.detail,
    )


def activity_response(found: Activity) -> audit_pb2.AuditActivityResponse:
    minutes = []
    for index, counts in enumerate(found.minutes):
        start = found.since.timestamp() + 60 * index
        minutes.append(
            audit_pb2.ActivityMinute(
                start=_stamp(datetime.fromtimestamp(start, UTC)),
                issued=counts.issued,
                rotated=counts.rotated,
                revoked=counts.revoked,
                refused=counts.refused,
            )
        )
    return audit_pb2.AuditActivityResponse(minutes=minutes, truncated=found.truncated)


def listed_lease(lease: LeaseRecord) -> leases_pb2.ListedLease:
    listed = leases_pb2.ListedLease(
        lease=rotation_pb2.SelectedLease(
            id=lease.id,
            cluster=lease.cluster,
            namespace=lease.namespace,
            service_account=lease.service_account,
            pod=lease.pod_name,
            role=lease.role,
            credential_name=lease.credential,
            generation=lease.generation,
            state=lease.state.value,
        ),
        created_at=_stamp(lease.created_at),
        updated_at=_stamp(lease.updated_at),
        last_error=lease.last_error or "",
    )
    if lease.expires_at is not None:
        listed.expires_at.CopyFrom(_stamp(lease.expires_at))
    if lease.revoke_after is not None:
        listed.revoke_after.CopyFrom(_stamp(lease.revoke_after))
    return listed
