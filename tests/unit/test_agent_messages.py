"""The agent's own protobuf writer and reader (injector/agent/messages.py) against the
generated classes: every field number it uses is the .proto's, what it writes the generated
code reads back, and what the generated code writes it reads, unknown fields skipped."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.api.v1 import broker_pb2
from injector.agent import messages
from injector.agent.messages import (
    Ack,
    Expiring,
    Issued,
    MessageError,
    Renewed,
    Revoked,
    Rotated,
)

NUMBERS: list[tuple[dict[str, int], type[Message]]] = [
    (messages.ISSUE_REQUEST, broker_pb2.IssueRequest),
    (messages.ISSUE_RESPONSE, broker_pb2.IssueResponse),
    (messages.LEASE, broker_pb2.Lease),
    (messages.CREDENTIAL, broker_pb2.Credential),
    (messages.MAP_ENTRY, broker_pb2.Credential.ValuesEntry),
    (messages.RELEASE_REQUEST, broker_pb2.ReleaseRequest),
    (messages.WATCH_REQUEST, broker_pb2.WatchRequest),
    (messages.ACK, broker_pb2.Ack),
    (messages.WATCH_RESPONSE, broker_pb2.WatchResponse),
    (messages.ROTATED, broker_pb2.Rotated),
    (messages.REVOKED, broker_pb2.Revoked),
    (messages.EXPIRING, broker_pb2.Expiring),
    (messages.RENEWED, broker_pb2.Renewed),
    (messages.TIMESTAMP, timestamp_pb2.Timestamp),
    (messages.DURATION, duration_pb2.Duration),
    (messages.STATUS, status_pb2.Status),
    (messages.ANY, any_pb2.Any),
    (messages.ERROR_INFO, error_details_pb2.ErrorInfo),
    (messages.RETRY_INFO, error_details_pb2.RetryInfo),
]
ENDS = datetime(2026, 12, 7, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.mark.parametrize(("numbers", "generated"), NUMBERS)
def test_every_field_number_is_the_protos(
    numbers: dict[str, int], generated: type[Message]
) -> None:
    fields = {field.name: field.number for field in generated.DESCRIPTOR.fields}
    assert {name: fields.get(name) for name in numbers} == numbers


def test_the_method_paths_are_the_services() -> None:
    service = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"]
    for method in ("Issue", "Release", "Watch"):
        full = service.methods_by_name[method].full_name  # broker.api.v1.BrokerService.Issue
        assert messages.SERVICE + method == "/" + full.rsplit(".", 1)[0] + "/" + method


def test_what_the_agent_writes_the_generated_code_reads() -> None:
    issue = broker_pb2.IssueRequest.FromString(messages.issue_request("db", "orders-db-ro"))
    assert (issue.credential_name, issue.role) == ("db", "orders-db-ro")
    release = broker_pb2.ReleaseRequest.FromString(messages.release_request("lease-é"))
    assert release.lease_id == "lease-é"
    ack = broker_pb2.WatchRequest.FromString(
        messages.watch_request(Ack("lease-2", 2**40, ("app", "worker")))
    )
    assert ack.WhichOneof("message") == "ack"
    assert (ack.ack.lease_id, ack.ack.generation) == ("lease-2", 2**40)
    assert list(ack.ack.restarted_containers) == ["app", "worker"]
    empty = broker_pb2.WatchRequest.FromString(messages.watch_request(Ack("", 0)))
    assert empty.HasField("ack")
    assert empty.ack.lease_id == ""


def lease(ends: datetime | None = ENDS, generation: int = 3) -> broker_pb2.Lease:
    message = broker_pb2.Lease(
        id="lease-3", role="orders-db-ro", credential_name="db", generation=generation
    )
    message.renewable = True
    if ends is not None:
        message.expires_at.FromDatetime(ends)
    return message


VALUES = {"username": "u", "password": "p:ä\n'\"", "empty": ""}


def test_what_the_generated_code_writes_the_agent_reads() -> None:
    reply = broker_pb2.IssueResponse(lease=lease(), credential=broker_pb2.Credential(values=VALUES))
    issued = messages.issue_response(reply.SerializeToString())
    assert issued == Issued("lease-3", "db", 3, ENDS, VALUES)
    assert issued.reveal() == VALUES
    assert "p:ä" not in repr(issued)
    endless = broker_pb2.IssueResponse(lease=lease(ends=None, generation=2**63 + 1))
    assert messages.issue_response(endless.SerializeToString()) == Issued(
        "lease-3", "db", 2**63 + 1, None, {}
    )
    epoch = broker_pb2.IssueResponse(lease=lease(ends=datetime(1970, 1, 1, tzinfo=UTC)))
    assert messages.issue_response(epoch.SerializeToString()).expires_at == datetime(
        1970, 1, 1, tzinfo=UTC
    )
    messages.release_response(broker_pb2.ReleaseResponse().SerializeToString())


def events() -> list[tuple[broker_pb2.WatchResponse, Any]]:
    credential = broker_pb2.Credential(values=VALUES)
    ending = broker_pb2.Expiring(lease_id="lease-3")
    ending.expires_at.FromDatetime(ENDS)
    renewed = broker_pb2.Renewed(lease_id="lease-3")
    renewed.expires_at.FromDatetime(ENDS)
    return [
        (
            broker_pb2.WatchResponse(
                rotated=broker_pb2.Rotated(lease=lease(), credential=credential)
            ),
            Rotated(Issued("lease-3", "db", 3, ENDS, VALUES)),
        ),
        (
            broker_pb2.WatchResponse(revoked=broker_pb2.Revoked(lease_id="l", reason="ROTATED")),
            Revoked("l", "ROTATED"),
        ),
        (broker_pb2.WatchResponse(expiring=ending), Expiring("lease-3", ENDS)),
        (
            broker_pb2.WatchResponse(expiring=broker_pb2.Expiring(lease_id="l")),
            Expiring("l", None),
        ),
        (broker_pb2.WatchResponse(renewed=renewed), Renewed("lease-3", ENDS)),
        (broker_pb2.WatchResponse(), None),
    ]


def test_every_watch_event_reads_as_the_generated_code_wrote_it() -> None:
    for response, expected in events():
        assert messages.watch_response(response.SerializeToString()) == expected


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_ack_carries_the_agents_span_and_every_event_the_brokers() -> None:
    """Tracing: the Ack's `traceparent` (field 4) is written, and a WatchResponse's (field 5)
    is read onto whichever event it carries; one not in the W3C form is dropped."""
    sent = broker_pb2.WatchRequest.FromString(
        messages.watch_request(Ack("lease-2", 2, ("app",), TRACEPARENT))
    )
    assert sent.ack.traceparent == TRACEPARENT
    untraced = broker_pb2.WatchRequest.FromString(messages.watch_request(Ack("lease-2", 2)))
    assert untraced.ack.traceparent == ""
    for response, expected in events():
        response.traceparent = TRACEPARENT
        read = messages.watch_response(response.SerializeToString())
        traced = None if expected is None else dataclasses.replace(expected, trace=TRACEPARENT)
        assert read == traced
        response.traceparent = TRACEPARENT.upper()
        assert messages.watch_response(response.SerializeToString()) == expected


def test_unknown_fields_and_events_are_skipped() -> None:
    """A newer broker's additions: an event of a kind this agent does not know is None, a
    field it does not know (of any wire type) is passed over."""
    unknown_event = b"\x32\x02\x0a\x00"  # field 6, a message: a newer broker's event
    assert messages.watch_response(unknown_event) is None
    extras = b"".join(
        [
            b"\x38\x96\x01",  # field 7, varint
            b"\x41" + b"\x00" * 8,  # field 8, fixed64
            b"\x4d" + b"\x00" * 4,  # field 9, fixed32
            b"\x52\x03abc",  # field 10, bytes
        ]
    )
    reply = broker_pb2.IssueResponse(lease=lease()).SerializeToString()
    issued = messages.issue_response(reply + extras)
    assert (issued.lease_id, issued.generation, issued.expires_at) == ("lease-3", 3, ENDS)


def test_refusal_details_are_read_from_the_status() -> None:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="VAULT_UNAVAILABLE", domain="keyferry.io"))
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=5)))
    other = any_pb2.Any()
    other.Pack(error_details_pb2.DebugInfo(detail="x"))
    status = status_pb2.Status(code=14, message="away", details=[other, info, retry])
    assert messages.status_details(status.SerializeToString()) == ("VAULT_UNAVAILABLE", 2.000000005)
    assert messages.status_details(status_pb2.Status(code=7).SerializeToString()) == ("", None)


@pytest.mark.parametrize(
    "broken",
    [
        b"\x0a\x05ab",  # a length past the end
        b"\x08",  # a varint cut short
        b"\x08" + b"\xff" * 11,  # a varint longer than 64 bits
        b"\x0b",  # a group (wire type 3)
        b"\x0a\x02\x0a\x01",  # lease.id's length past the end of the lease
        b"\x0a\x04\x0a\x02\xff\xfe",  # lease.id not UTF-8
        b"\x0a\x02\x08\x01",  # lease.id a number
        b"\x09\x00\x00",  # a fixed64 cut short
    ],
)
def test_malformed_bytes_are_a_message_error(broken: bytes) -> None:
    with pytest.raises(MessageError):
        messages.issue_response(broken)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_any_bytes_read_as_the_generated_code_reads_them_or_fail_typed(raw: bytes) -> None:
    """Whatever the broker (or a man in the middle it would take to be) sends, the agent
    gets a value or MessageError; and where protobuf reads the bytes too, the same value."""
    for mine, generated in (
        (messages.issue_response, broker_pb2.IssueResponse),
        (messages.watch_response, broker_pb2.WatchResponse),
    ):
        try:
            read = mine(raw)
        except MessageError:
            continue
        try:
            theirs = generated.FromString(raw)
        except DecodeError:
            continue  # protobuf is stricter in places (a map entry's UTF-8, say)
        if isinstance(theirs, broker_pb2.IssueResponse):
            assert read == messages.issue_response(theirs.SerializeToString())
        else:
            assert read == messages.watch_response(theirs.SerializeToString())
    with contextlib.suppress(MessageError):
        messages.status_details(raw)
