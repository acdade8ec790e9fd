"""The one place where protobuf messages become models and back.

Nothing else in the broker reads or builds API messages' fields. A malformed role becomes
InvalidRequest naming the field as `roles[<i>].<field>`, with the hint the role models give.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from pydantic import TypeAdapter, ValidationError

from broker import tracing
from broker.api.v1 import access_pb2, broker_pb2, clusters_pb2, roles_pb2, rotation_pb2
from broker.clusters import ClusterConnection, ClusterHealth, WatchState
from broker.errors import InvalidRequest
from broker.models import AwsRole, Credential, DatabaseRole, KvRole, PkiRole, RoleSpec
from broker.service import (
    AckMessage,
    ClusterCredential,
    ClusterView,
    GrantCredential,
    GrantEnd,
    IssuedLease,
    LeaseProgress,
    LeaseRenewed,
    LeaseRevoked,
    LeaseRotated,
    LeaseSelector,
    Outcome,
    Planned,
    RenewedLease,
    RootRotated,
    RootTarget,
    Rotation,
    SelectionEvent,
    StoredRole,
    Summary,
    WatchEvent,
)
from broker.store import GrantRecord, GrantState, KubeGrantRecord, LeaseRecord

_ROLE = TypeAdapter[RoleSpec](RoleSpec)
_CREDENTIAL_TYPES = {
    roles_pb2.AWS_CREDENTIAL_TYPE_IAM_USER: "iam_user",
    roles_pb2.AWS_CREDENTIAL_TYPE_ASSUMED_ROLE: "assumed_role",
}
_CREDENTIAL_TYPE_NUMBERS = {name: number for number, name in _CREDENTIAL_TYPES.items()}


# --- Broker ---------------------------------------------------------------------------------


def issue_response(issued: IssuedLease) -> broker_pb2.IssueResponse:
    return broker_pb2.IssueResponse(
        lease=lease_message(issued.lease, issued.renewable),
        credential=_credential(issued.credential),
    )


def lease_message(lease: LeaseRecord, renewable: bool) -> broker_pb2.Lease:
    message = broker_pb2.Lease(
        id=lease.id,
        role=lease.role,
        credential_name=lease.credential,
        generation=lease.generation,
        renewable=renewable,
    )
    if lease.expires_at is not None:
        message.expires_at.CopyFrom(_timestamp(lease.expires_at))
    return message


def renew_response(renewed: RenewedLease) -> broker_pb2.RenewResponse:
    return broker_pb2.RenewResponse(lease=lease_message(renewed.lease, renewed.renewable))


def watch_response(event: WatchEvent) -> broker_pb2.WatchResponse:
    if isinstance(event, LeaseRotated):
        rotated = broker_pb2.Rotated(
            lease=lease_message(event.lease, event.vault_lease.renewable),
            credential=_credential(event.credential),
        )
        return broker_pb2.WatchResponse(rotated=rotated, traceparent=event.trace)
    if isinstance(event, LeaseRevoked):
        revoked = broker_pb2.Revoked(lease_id=event.lease_id, reason=event.reason)
        return broker_pb2.WatchResponse(revoked=revoked, traceparent=event.trace)
    if isinstance(event, LeaseRenewed):
        renewed = broker_pb2.Renewed(
            lease_id=event.lease_id, expires_at=_timestamp(event.expires_at)
        )
        return broker_pb2.WatchResponse(renewed=renewed, traceparent=event.trace)
    expiring = broker_pb2.Expiring(lease_id=event.lease_id, expires_at=_timestamp(event.expires_at))
    return broker_pb2.WatchResponse(expiring=expiring, traceparent=event.trace)


def ack(request: broker_pb2.WatchRequest) -> AckMessage | None:
    """The Ack a WatchRequest carries; None for a message this broker does not know."""
    if request.WhichOneof("message") != "ack":
        return None
    return AckMessage(
        lease_id=request.ack.lease_id,
        generation=request.ack.generation,
        restarted=tuple(request.ack.restarted_containers),
        trace=tracing.received(request.ack.traceparent),
    )


def _credential(credential: Credential) -> broker_pb2.Credential:
    return broker_pb2.Credential(values=credential.reveal())


# --- Rotation -------------------------------------------------------------------------------


def rotation_grace(request: rotation_pb2.RotateLeasesRequest) -> timedelta | None:
    return _timedelta(request.grace) if request.HasField("grace") else None


def rotate_response(rotations: list[Rotation]) -> rotation_pb2.RotateLeasesResponse:
    messages = []
    for rotation in rotations:
        message = rotation_pb2.LeaseRotation(
            previous_lease_id=rotation.previous_lease_id,
            lease=lease_message(rotation.lease, rotation.renewable),
            already_rotated=rotation.already_rotated,
        )
        if rotation.revoke_after is not None:
            message.revoke_after.CopyFrom(_timestamp(rotation.revoke_after))
        messages.append(message)
    return rotation_pb2.RotateLeasesResponse(rotations=messages)


def lease_selector(message: rotation_pb2.LeaseSelector) -> LeaseSelector:
    """The request's selector, validated; InvalidRequest names `selector.<field>`."""
    return LeaseSelector.parse(
        clusters=tuple(message.clusters),
        namespaces=tuple(message.namespaces),
        service_accounts=tuple(message.service_accounts),
        pods=tuple(message.pods),
        roles=tuple(message.roles),
        lease_ids=tuple(message.lease_ids),
        all=message.all,
    )


def selected_grace(request: rotation_pb2.RotateSelectedRequest) -> timedelta | None:
    return _timedelta(request.grace) if request.HasField("grace") else None


def concurrency(value: int) -> int | None:
    return value or None


_OUTCOMES = {
    Outcome.PLANNED: rotation_pb2.OUTCOME_PLANNED,
    Outcome.ROTATED: rotation_pb2.OUTCOME_ROTATED,
    Outcome.ALREADY_ROTATED: rotation_pb2.OUTCOME_ALREADY_ROTATED,
    Outcome.REVOKED: rotation_pb2.OUTCOME_REVOKED,
    Outcome.QUEUED: rotation_pb2.OUTCOME_QUEUED,
    Outcome.FAILED: rotation_pb2.OUTCOME_FAILED,
}


def _selected_lease(lease: LeaseRecord) -> rotation_pb2.SelectedLease:
    return rotation_pb2.SelectedLease(
        id=lease.id,
        cluster=lease.cluster,
        namespace=lease.namespace,
        service_account=lease.service_account,
        pod=lease.pod_name,
        role=lease.role,
        credential_name=lease.credential,
        generation=lease.generation,
        state=lease.state.value,
    )


def _selection_fields(event: SelectionEvent) -> dict[str, Any]:
    if isinstance(event, Planned):
        return {"plan": rotation_pb2.SelectionPlan(matched=event.matched)}
    if isinstance(event, LeaseProgress):
        outcome = rotation_pb2.LeaseOutcome(
            lease=_selected_lease(event.lease),
            outcome=_OUTCOMES[event.outcome],
            error=event.error or "",
        )
        if event.successor is not None:
            outcome.successor.CopyFrom(_selected_lease(event.successor))
        return {"lease": outcome}
    summary: Summary = event
    return {
        "summary": rotation_pb2.SelectionSummary(
            matched=summary.matched,
            done=summary.done,
            failed=summary.failed,
            pending=summary.pending,
            dry_run=summary.dry_run,
        )
    }


def rotate_selected_response(event: SelectionEvent) -> rotation_pb2.RotateSelectedResponse:
    return rotation_pb2.RotateSelectedResponse(**_selection_fields(event))


def revoke_selected_response(event: SelectionEvent) -> rotation_pb2.RevokeSelectedResponse:
    return rotation_pb2.RevokeSelectedResponse(**_selection_fields(event))


def root_target(request: rotation_pb2.RotateRootRequest) -> RootTarget:
    return RootTarget.parse(request.mount, request.connection)


def rotate_root_response(rotated: RootRotated) -> rotation_pb2.RotateRootResponse:
    return rotation_pb2.RotateRootResponse(
        path=rotated.path, rotated_at=_timestamp(rotated.rotated_at)
    )


# --- Access ---------------------------------------------------------------------------------

_GRANT_STATES = {
    GrantState.PENDING: access_pb2.GRANT_STATE_PENDING,
    GrantState.APPROVED: access_pb2.GRANT_STATE_APPROVED,
    GrantState.ISSUED: access_pb2.GRANT_STATE_ISSUED,
    GrantState.DENIED: access_pb2.GRANT_STATE_DENIED,
    GrantState.EXPIRED: access_pb2.GRANT_STATE_EXPIRED,
    GrantState.REVOKED: access_pb2.GRANT_STATE_REVOKED,
}
_GRANT_STATE_MODELS = {number: state for state, number in _GRANT_STATES.items()}


def grant_duration(request: access_pb2.RequestGrantRequest) -> timedelta | None:
    return _timedelta(request.duration) if request.HasField("duration") else None


def grant_states(request: access_pb2.ListGrantsRequest) -> list[GrantState]:
    """The states asked for; InvalidRequest names an unknown one."""
    states = []
    for index, number in enumerate(request.states):
        if number not in _GRANT_STATE_MODELS:
            raise InvalidRequest(
                f"states[{index}]",
                "is not a grant state: pending, approved, issued, denied, expired or revoked",
            )
        states.append(_GRANT_STATE_MODELS[number])
    return states


def grant_message(grant: GrantRecord) -> access_pb2.Grant:
    message = access_pb2.Grant(
        id=grant.id,
        state=_GRANT_STATES[grant.state],
        role=grant.role,
        requester=grant.requester,
        reason=grant.reason,
        duration=_duration(timedelta(seconds=grant.duration_seconds)),
        requested_at=_timestamp(grant.requested_at),
        expires_at=_timestamp(grant.expires_at),
        decided_by=grant.decided_by or "",
        ended_by=grant.ended_by or "",
        lease_id=grant.lease_id or "",
    )
    if grant.decided_at is not None:
        message.decided_at.CopyFrom(_timestamp(grant.decided_at))
    if grant.ended_at is not None:
        message.ended_at.CopyFrom(_timestamp(grant.ended_at))
    return message


def with_cluster_access(
    message: access_pb2.Grant, details: KubeGrantRecord | None
) -> access_pb2.Grant:
    """The grant's message with what it gives in a member cluster, for a cluster grant."""
    if details is None:
        return message
    access = message.cluster_access
    access.cluster = details.cluster
    access.namespace = details.namespace or ""
    access.all_namespaces = details.namespace is None
    access.kube_role = details.cluster_role
    access.service_account_namespace = details.account_namespace
    access.service_account = details.account
    access.objects = details.objects.value
    access.removal_attempts = details.attempts
    access.last_error = details.last_error or ""
    access.ended_path = details.ended_path.value if details.ended_path is not None else ""
    if details.token_expires_at is not None:
        access.token_expires_at.CopyFrom(_timestamp(details.token_expires_at))
    return message


def cluster_credential_response(issued: ClusterCredential) -> access_pb2.IssueClusterAccessResponse:
    return access_pb2.IssueClusterAccessResponse(
        grant=with_cluster_access(grant_message(issued.grant), issued.details),
        server=issued.server,
        ca_pem=issued.ca_pem,
        token=issued.token,
        token_expires_at=_timestamp(issued.token_expires_at),
        namespace=issued.details.namespace or "",
    )


def grant_credential_response(issued: GrantCredential) -> access_pb2.IssueForGrantResponse:
    return access_pb2.IssueForGrantResponse(
        grant=grant_message(issued.grant),
        lease=lease_message(issued.lease, issued.renewable),
        credential=_credential(issued.credential),
    )


def revoke_grant_response(ended: GrantEnd) -> access_pb2.RevokeGrantResponse:
    return access_pb2.RevokeGrantResponse(
        grant=grant_message(ended.grant), pending_lease_ids=ended.pending_lease_ids
    )


# --- Roles ----------------------------------------------------------------------------------


def role_message(stored: StoredRole) -> roles_pb2.Role:
    message = spec_message(stored.spec)
    message.updated_at.CopyFrom(_timestamp(stored.updated_at))
    return message


def spec_message(spec: RoleSpec) -> roles_pb2.Role:
    """A role as ApplyRoles takes it (no updated_at)."""
    message = roles_pb2.Role(name=spec.name, description=spec.description)
    if spec.rotation is not None:
        schedule = roles_pb2.RotationSchedule(cron=spec.rotation.cron or "")
        if spec.rotation.every is not None:
            schedule.every.CopyFrom(_duration(spec.rotation.every))
        message.rotation.CopyFrom(schedule)
    if isinstance(spec, DatabaseRole):
        database = roles_pb2.DatabaseBackend(mount=spec.mount, vault_role=spec.vault_role)
        if spec.connection is not None:
            where = spec.connection
            database.connection.CopyFrom(
                roles_pb2.DatabaseConnection(
                    host=where.host,
                    port=where.port,
                    dbname=where.dbname or "",
                    sslmode=where.sslmode or "",
                )
            )
        message.database.CopyFrom(database)
    elif isinstance(spec, AwsRole):
        aws = roles_pb2.AwsBackend(
            mount=spec.mount,
            vault_role=spec.vault_role,
            credential_type=_CREDENTIAL_TYPE_NUMBERS[spec.credential_type],
            role_arn=spec.role_arn or "",
        )
        if spec.ttl is not None:
            aws.ttl.CopyFrom(_duration(spec.ttl))
        message.aws.CopyFrom(aws)
    elif isinstance(spec, KvRole):
        kv = roles_pb2.KvBackend(mount=spec.mount, path=spec.path)
        if spec.version is not None:
            kv.version = spec.version
        message.kv.CopyFrom(kv)
    elif isinstance(spec, PkiRole):
        pki = roles_pb2.PkiBackend(
            mount=spec.mount,
            vault_role=spec.vault_role,
            common_name=spec.common_name,
            alt_names=spec.alt_names,
        )
        if spec.ttl is not None:
            pki.ttl.CopyFrom(_duration(spec.ttl))
        message.pki.CopyFrom(pki)
    return message


def role_specs(messages: list[roles_pb2.Role]) -> list[RoleSpec]:
    """Every role validated; InvalidRequest naming `roles[i].field` for the first problem."""
    specs = []
    for index, message in enumerate(messages):
        try:
            specs.append(_ROLE.validate_python(_role_fields(message, index)))
        except ValidationError as exc:
            error = exc.errors()[0]
            loc = [str(p) for p in error["loc"] if str(p) not in ("database", "aws", "kv", "pki")]
            field = ".".join([f"roles[{index}]", *loc]) if loc else f"roles[{index}]"
            detail = (error.get("ctx") or {}).get("error", error["msg"])
            raise InvalidRequest(field, str(detail)) from exc
    return specs


def role_spec(message: roles_pb2.Role) -> RoleSpec:
    return role_specs([message])[0]


def _role_fields(message: roles_pb2.Role, index: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": message.name, "description": message.description}
    backend = message.WhichOneof("backend")
    if backend is None:
        raise InvalidRequest(
            f"roles[{index}].backend", "set one of database, aws, kv or pki for the role"
        )
    fields["kind"] = backend
    if message.HasField("rotation"):
        schedule = message.rotation
        fields["rotation"] = {
            "every": _timedelta(schedule.every) if schedule.HasField("every") else None,
            "cron": schedule.cron or None,
        }
    if backend == "database":
        fields |= {"mount": message.database.mount, "vault_role": message.database.vault_role}
        if message.database.HasField("connection"):
            where = message.database.connection
            fields["connection"] = {
                "host": where.host,
                "port": where.port or 5432,
                "dbname": where.dbname or None,
                "sslmode": where.sslmode or None,
            }
    elif backend == "aws":
        aws = message.aws
        if aws.credential_type not in _CREDENTIAL_TYPES:
            raise InvalidRequest(f"roles[{index}].credential_type", "set IAM_USER or ASSUMED_ROLE")
        fields |= {
            "mount": aws.mount,
            "vault_role": aws.vault_role,
            "credential_type": _CREDENTIAL_TYPES[aws.credential_type],
            "ttl": _timedelta(aws.ttl) if aws.HasField("ttl") else None,
            "role_arn": aws.role_arn or None,
        }
    elif backend == "kv":
        kv = message.kv
        fields |= {
            "mount": kv.mount,
            "path": kv.path,
            "version": kv.version if kv.HasField("version") else None,
        }
    else:
        pki = message.pki
        fields |= {
            "mount": pki.mount,
            "vault_role": pki.vault_role,
            "common_name": pki.common_name,
            "alt_names": list(pki.alt_names),
            "ttl": _timedelta(pki.ttl) if pki.HasField("ttl") else None,
        }
    return fields


# --- well-known types -------------------------------------------------------------------------


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def _timedelta(value: duration_pb2.Duration) -> timedelta:
    return value.ToTimedelta()


# --- Clusters -------------------------------------------------------------------------------


def cluster_connection(request: clusters_pb2.RegisterClusterRequest) -> ClusterConnection:
    """A RegisterCluster request as a validated connection; InvalidRequest names the field."""
    kind = request.credential.WhichOneof("kind")
    values: dict[str, Any] = {
        "name": request.name,
        "server": request.server,
        "ca_pem": request.ca_pem,
        "issuer": request.issuer,
    }
    if kind == "bearer_token":
        values["bearer_token"] = request.credential.bearer_token
    elif kind == "client_certificate":
        values["cert_pem"] = request.credential.client_certificate.cert_pem
        values["key_pem"] = request.credential.client_certificate.key_pem
    try:
        return ClusterConnection.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "credential"
        raise InvalidRequest(field, error["msg"]) from None


def cluster_message(view: ClusterView) -> clusters_pb2.Cluster:
    message = clusters_pb2.Cluster(
        name=view.name,
        server=view.server,
        issuer=view.issuer,
        source=(
            clusters_pb2.CLUSTER_SOURCE_REGISTERED
            if view.registered
            else clusters_pb2.CLUSTER_SOURCE_CONFIG
        ),
        key_ids=list(view.key_ids),
        active_leases=view.active_leases,
    )
    if view.last_contact is not None:
        message.last_contact.CopyFrom(_timestamp(view.last_contact))
    if view.jwks_fetched_at is not None:
        message.jwks_fetched_at.CopyFrom(_timestamp(view.jwks_fetched_at))
    if view.registered_at is not None:
        message.registered_at.CopyFrom(_timestamp(view.registered_at))
    message.pod_watch.CopyFrom(_pod_watch(view.health))
    return message


_WATCH_STATES = {
    WatchState.NOT_STARTED: clusters_pb2.WATCH_STATE_NOT_STARTED,
    WatchState.WATCHING: clusters_pb2.WATCH_STATE_WATCHING,
    WatchState.RECONNECTING: clusters_pb2.WATCH_STATE_RECONNECTING,
}


def _pod_watch(health: ClusterHealth) -> clusters_pb2.PodWatchHealth:
    message = clusters_pb2.PodWatchHealth(
        state=_WATCH_STATES[health.watch], last_error=health.watch_error
    )
    if health.watch_since is not None:
        message.since.CopyFrom(_timestamp(health.watch_since))
    if health.last_event is not None:
        message.last_event.CopyFrom(_timestamp(health.last_event))
    return message
