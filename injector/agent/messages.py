"""The workload API's messages as the agent sends and reads them, in protobuf's wire format,
written and read here with the standard library.

The agent uses six of the broker's messages and reads two of google.rpc's (the ErrorInfo
and RetryInfo in a refusal's details). The generated modules would load protobuf's runtime,
the descriptors and grpc_status: about 3 MiB of the agent's resident memory (issue 19's
budget is 40 MiB, most of it the interpreter and gRPC). The field numbers below are the
.proto files' (proto/broker/api/v1/broker.proto, google/rpc/*.proto);
tests/unit/test_agent_messages.py checks each against the generated descriptors and round
trips every message through the generated classes. Reading follows protobuf's rules: an
unknown field is skipped (a newer broker may add some), the last value of a field wins, a
missing one is its zero value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from .tracing import received

SERVICE = "/broker.api.v1.BrokerService/"
"""The gRPC method path prefix: `SERVICE + "Issue"`."""

# Field numbers, per message (name -> number), as in the .proto files.
ISSUE_REQUEST = {"credential_name": 1, "role": 2}
ISSUE_RESPONSE = {"lease": 1, "credential": 2}
LEASE = {"id": 1, "role": 2, "credential_name": 3, "expires_at": 4, "generation": 5}
CREDENTIAL = {"values": 1}
MAP_ENTRY = {"key": 1, "value": 2}
RELEASE_REQUEST = {"lease_id": 1}
WATCH_REQUEST = {"ack": 1}
ACK = {"lease_id": 1, "generation": 2, "restarted_containers": 3, "traceparent": 4}
WATCH_EVENTS = {"rotated": 1, "revoked": 2, "expiring": 3, "renewed": 4}
"""WatchResponse's `event` oneof."""
WATCH_RESPONSE = {**WATCH_EVENTS, "traceparent": 5}
ROTATED = {"lease": 1, "credential": 2}
REVOKED = {"lease_id": 1, "reason": 2}
EXPIRING = {"lease_id": 1, "expires_at": 2}
RENEWED = {"lease_id": 1, "expires_at": 2}
TIMESTAMP = {"seconds": 1, "nanos": 2}
DURATION = {"seconds": 1, "nanos": 2}
STATUS = {"details": 3}
ANY = {"type_url": 1, "value": 2}
ERROR_INFO = {"reason": 1}
RETRY_INFO = {"retry_delay": 1}
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MessageError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


class Ack(NamedTuple):
    """What the agent sends up the Watch stream: the generation in place, and the app
    containers it restarted to put it in use (empty unless `on-rotate: restart`)."""

    lease_id: str
    generation: int
    restarted: tuple[str, ...] = ()
    trace: str = ""
    """The traceparent of the agent's span that handled the event ("": untraced)."""


@dataclass(frozen=True)
class Issued:
    """A lease the agent holds and the credential's values (left out of repr, so out of any
    log line or traceback that shows the object)."""

    lease_id: str
    credential_name: str
    generation: int
    expires_at: datetime | None
    """Aware, UTC; None when the lease has no end."""
    values: Mapping[str, str] = field(repr=False)

    def reveal(self) -> dict[str, str]:
        return dict(self.values)


@dataclass(frozen=True)
class Rotated:
    issued: Issued
    trace: str = ""
    """The broker's push span as a W3C traceparent ("": untraced); on every event."""


@dataclass(frozen=True)
class Revoked:
    lease_id: str
    reason: str
    trace: str = ""


@dataclass(frozen=True)
class Expiring:
    lease_id: str
    expires_at: datetime | None
    trace: str = ""


@dataclass(frozen=True)
class Renewed:
    """The broker extended the lease: it now ends at `expires_at`."""

    lease_id: str
    expires_at: datetime
    trace: str = ""


WatchEvent = Rotated | Revoked | Expiring | Renewed


# --- writing ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _bytes(number: int, payload: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(payload)) + payload


def _text(number: int, value: str) -> bytes:
    return _bytes(number, value.encode("utf-8")) if value else b""


def _uint(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value) if value else b""


def issue_request(credential_name: str, role: str) -> bytes:
    """broker.api.v1.IssueRequest."""
    return _text(ISSUE_REQUEST["credential_name"], credential_name) + _text(
        ISSUE_REQUEST["role"], role
    )


def release_request(lease_id: str) -> bytes:
    """broker.api.v1.ReleaseRequest."""
    return _text(RELEASE_REQUEST["lease_id"], lease_id)


def watch_request(ack: Ack) -> bytes:
    """broker.api.v1.WatchRequest carrying `ack`."""
    body = _text(ACK["lease_id"], ack.lease_id) + _uint(ACK["generation"], ack.generation)
    for name in ack.restarted:
        body += _bytes(ACK["restarted_containers"], name.encode("utf-8"))
    body += _text(ACK["traceparent"], ack.trace)
    return _bytes(WATCH_REQUEST["ack"], body)


# --- reading ---------------------------------------------------------------------------------


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise MessageError("a truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each varint and length-delimited field; others skipped."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, at = _read_varint(data, at)
            yield number, value
        elif wire_type == _LENGTH:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise MessageError("a length past the end of the message")
            yield number, data[at : at + size]
            at += size
        elif wire_type in (_FIXED64, _FIXED32):
            at += 8 if wire_type == _FIXED64 else 4
        else:
            raise MessageError(f"wire type {wire_type} (groups are not used by this API)")
    if at != len(data):
        raise MessageError("a fixed-size field past the end of the message")


def _read(data: bytes, numbers: Mapping[str, int]) -> dict[str, int | bytes]:
    """The fields of `numbers` found in `data`, by name (the last value of each)."""
    names = {number: name for name, number in numbers.items()}
    return {names[number]: value for number, value in _fields(data) if number in names}


def _repeated(data: bytes, number: int) -> list[bytes]:
    """Every value of the repeated (or map) field `number`, in order."""
    return [value for found, value in _fields(data) if found == number and isinstance(value, bytes)]


def _str(fields: Mapping[str, object], name: str) -> str:
    value = fields.get(name, b"")
    if not isinstance(value, bytes):
        raise MessageError(f"field {name} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"field {name} is not UTF-8") from exc


def _int(fields: Mapping[str, object], name: str, *, signed: bool = False) -> int:
    value = fields.get(name, 0)
    if not isinstance(value, int):
        raise MessageError(f"field {name} is not a number")
    if signed and value >= 1 << 63:
        value -= 1 << 64
    return value


def _sub(fields: Mapping[str, object], name: str) -> bytes | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, bytes):
        raise MessageError(f"field {name} is not a message")
    return value


def _moment(data: bytes | None) -> datetime | None:
    """google.protobuf.Timestamp as an aware UTC datetime; None when absent."""
    if data is None:
        return None
    fields = _read(data, TIMESTAMP)
    seconds, nanos = _int(fields, "seconds", signed=True), _int(fields, "nanos", signed=True)
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _issued(lease: bytes | None, credential: bytes | None) -> Issued:
    fields = _read(lease or b"", LEASE)
    values: dict[str, str] = {}
    for entry in _repeated(credential or b"", CREDENTIAL["values"]):
        pair = _read(entry, MAP_ENTRY)
        values[_str(pair, "key")] = _str(pair, "value")
    return Issued(
        lease_id=_str(fields, "id"),
        credential_name=_str(fields, "credential_name"),
        generation=_int(fields, "generation"),
        expires_at=_moment(_sub(fields, "expires_at")),
        values=values,
    )


def issue_response(data: bytes) -> Issued:
    """broker.api.v1.IssueResponse."""
    fields = _read(data, ISSUE_RESPONSE)
    return _issued(_sub(fields, "lease"), _sub(fields, "credential"))


def release_response(data: bytes) -> None:
    """broker.api.v1.ReleaseResponse (no fields; well-formed is all it needs to be)."""
    for _ in _fields(data):
        pass


def watch_response(data: bytes) -> WatchEvent | None:
    """broker.api.v1.WatchResponse's event; None for an event this agent does not know
    (a newer broker's: skipped, as docs/api.md asks) or none at all. Its `traceparent` is
    kept only in the W3C form (`tracing.received`): a malformed one is ignored."""
    last: tuple[int, bytes] | None = None
    raw_trace: bytes = b""
    for number, value in _fields(data):
        if number in WATCH_EVENTS.values() and isinstance(value, bytes):
            last = (number, value)  # a oneof: the last member wins
        elif number == WATCH_RESPONSE["traceparent"] and isinstance(value, bytes):
            raw_trace = value
    if last is None:
        return None
    trace = received(raw_trace.decode("ascii", errors="replace"))
    number, body = last
    if number == WATCH_EVENTS["rotated"]:
        fields = _read(body, ROTATED)
        return Rotated(_issued(_sub(fields, "lease"), _sub(fields, "credential")), trace)
    if number == WATCH_EVENTS["revoked"]:
        fields = _read(body, REVOKED)
        return Revoked(_str(fields, "lease_id"), _str(fields, "reason"), trace)
    if number == WATCH_EVENTS["renewed"]:
        fields = _read(body, RENEWED)
        ends = _moment(_sub(fields, "expires_at")) or _EPOCH
        return Renewed(_str(fields, "lease_id"), ends, trace)
    fields = _read(body, EXPIRING)
    return Expiring(_str(fields, "lease_id"), _moment(_sub(fields, "expires_at")), trace)


def status_details(data: bytes) -> tuple[str, float | None]:
    """From a google.rpc.Status (the `grpc-status-details-bin` trailer): the ErrorInfo
    reason ("" when none) and the RetryInfo delay in seconds (None when none)."""
    reason, retry_after = "", None
    for detail in _repeated(data, STATUS["details"]):
        fields = _read(detail, ANY)
        kind, body = _str(fields, "type_url"), _sub(fields, "value") or b""
        if kind == ERROR_INFO_TYPE:
            reason = _str(_read(body, ERROR_INFO), "reason")
        elif kind == RETRY_INFO_TYPE:
            delay = _sub(_read(body, RETRY_INFO), "retry_delay") or b""
            parts = _read(delay, DURATION)
            seconds = _int(parts, "seconds", signed=True)
            retry_after = seconds + _int(parts, "nanos", signed=True) / 1e9
    return reason, retry_after
