"""Audit records and the canonical JSON their hashes are computed over.

Canonical JSON, as keyferry defines it (a strict subset of JSON; close to RFC 8785 but
without floats):

- UTF-8, no byte order mark, no whitespace outside strings (separators `,` and `:`);
- object members sorted by key, comparing Unicode code points; every field of the model
  is present, `null` when unset;
- strings escape only `"`, `\\` and the control characters U+0000-U+001F (`\\b \\f \\n \\r
  \\t`, the rest as lowercase `\\u00xx`); everything else is written as itself;
- numbers are integers only, in plain decimal; floats are refused;
- times are strings `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, always six fraction digits;
- `selector`, `target`, `count`, `peer` and `trace_id` (added after the first records
  were written) are present only when set, so the records written before they existed keep their
  canonical form and hash.

A record's `hash` is the lowercase hex SHA-256 of the canonical JSON of every other field
of the record, `seq` and `prev` included; `prev` is the previous record's hash, and 64
zeros for the first record. A log line is the canonical JSON of the whole record, then
`\\n`; a line that is not in canonical form is damage, even if it parses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_serializer,
    model_serializer,
)

GENESIS = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Action = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Reason = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
FingerprintName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
FingerprintValue = Annotated[str, StringConstraints(pattern=r"^hmac-sha256:[0-9a-f]{64}$")]
LATER_FIELDS = ("selector", "target", "count", "peer", "trace_id")
TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
SelectorField = Literal[
    "clusters", "namespaces", "service_accounts", "pods", "roles", "lease_ids", "all"
]


class PrincipalKind(StrEnum):
    WORKLOAD = "workload"
    OPERATOR = "operator"
    SYSTEM = "system"


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


class Principal(BaseModel):
    """Who: a workload (`cluster/namespace/service account`), an operator (certificate
    subject) or the broker itself (the job's name, e.g. `scheduler.renew`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: PrincipalKind
    name: Name


class AuditEvent(BaseModel):
    """What the caller records; AuditLog adds the sequence number, time and hashes.

    Free text is deliberately absent: every field is an identifier, an enum, or a
    fingerprint, so a secret has nowhere to go by accident.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    who: Principal
    action: Action
    decision: Decision | None = None
    reason: Reason | None = None
    cluster: Name | None = None
    namespace: Name | None = None
    pod: Name | None = None
    pod_uid: Name | None = None
    role: Name | None = None
    credential: Name | None = None
    lease_id: Name | None = None
    generation: int | None = Field(default=None, ge=0)
    policy_ids: tuple[Name, ...] = ()
    request_id: Name | None = None
    vault_request_id: Name | None = None
    fingerprints: dict[FingerprintName, FingerprintValue] = Field(default_factory=dict)
    selector: dict[SelectorField, tuple[Name, ...]] | None = None
    """What an operator's rotate or revoke selected (field -> values; `all` -> ())."""
    target: Name | None = None
    """What a change acted on besides its lease: a Vault path, a Vault lease id, or the app
    container a restart ended (`pod.restarted`)."""
    count: int | None = Field(default=None, ge=1)
    """How many refusals of one kind a summary record stands for
    (broker.service.common.refusals)."""
    peer: Name | None = None
    """Where a refused call came from: the gRPC peer's address without its port."""
    trace_id: TraceId | None = None
    """The OpenTelemetry trace of the request that caused the record (tracing on only):
    the same id the request's spans and log lines carry (broker.tracing)."""

    @model_serializer(mode="wrap")
    def _later_fields_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in LATER_FIELDS:
                if data.get(name) is None:
                    data.pop(name, None)
        return data


class AuditRecord(AuditEvent):
    seq: int = Field(ge=0)
    time: AwareDatetime
    prev: Hash
    hash: Hash

    @field_serializer("time")
    def _time(self, value: datetime) -> str:
        return format_time(value)

    def line(self) -> bytes:
        """The record as one log line: canonical JSON and a newline."""
        return canonical_json(self.model_dump(mode="json")) + b"\n"

    def computed_hash(self) -> str:
        return record_hash(self.model_dump(mode="json", exclude={"hash"}))


def seal(event: AuditEvent, seq: int, prev: str, time: datetime) -> AuditRecord:
    """The next record of a chain whose last hash is `prev`."""
    body = {**event.model_dump(mode="json"), "seq": seq, "time": format_time(time), "prev": prev}
    return AuditRecord.model_validate({**body, "hash": record_hash(body)})


def parse_line(line: str | bytes) -> AuditRecord:
    """A record from its log line; ValueError if the line is not a canonical record."""
    text = line.decode() if isinstance(line, bytes) else line
    text = text.removesuffix("\n")
    record = AuditRecord.model_validate_json(text)
    if record.line() != text.encode() + b"\n":
        raise ValueError("the line is not the canonical JSON of its record")
    return record


def record_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def canonical_json(value: Mapping[str, Any]) -> bytes:
    _refuse_floats(value)
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def _refuse_floats(value: object) -> None:
    if isinstance(value, float):
        raise TypeError("canonical JSON has no floats")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)
