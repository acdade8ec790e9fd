"""Canonical JSON, record sealing and fingerprints: the pure parts of the audit trail."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import SecretStr, ValidationError

from broker.audit import (
    GENESIS,
    AuditEvent,
    Decision,
    Fingerprinter,
    Principal,
    PrincipalKind,
    canonical_json,
    record_hash,
)
from broker.audit.records import parse_line, seal
from broker.errors import InvalidRequest

KEY = b"k" * 32
WHO = Principal(kind=PrincipalKind.WORKLOAD, name="prod-a/orders/api")
WHEN = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_canonical_json_is_sorted_compact_utf8_and_escapes_only_what_it_must() -> None:
    value = {"b": 1, "a": 'é\n\u0001"\\/', "c": None, "d": [True, False], "A": {"z": 0, "y": -1}}
    assert (
        canonical_json(value)
        == (
            '{"A":{"y":-1,"z":0},"a":"é\\n\\u0001\\"\\\\/","b":1,"c":null,"d":[true,false]}'
        ).encode()
    )


def test_canonical_json_refuses_floats() -> None:
    with pytest.raises(TypeError):
        canonical_json({"ttl": 1.5})
    with pytest.raises(TypeError):
        canonical_json({"nested": [{"x": 0.1}]})


def test_a_sealed_record_hashes_its_canonical_body_including_prev_and_seq() -> None:
    event = AuditEvent(who=WHO, action="issue", decision=Decision.ALLOW, policy_ids=("p1",))
    record = seal(event, seq=0, prev=GENESIS, time=WHEN)

    body = record.model_dump(mode="json", exclude={"hash"})
    assert body["time"] == "2030-01-02T03:04:05.000006Z"
    assert body["prev"] == GENESIS
    assert body["seq"] == 0
    assert record.hash == hashlib.sha256(canonical_json(body)).hexdigest() == record_hash(body)
    assert record.line() == canonical_json(record.model_dump(mode="json")) + b"\n"

    following = seal(event, seq=1, prev=record.hash, time=WHEN)
    assert following.hash != record.hash  # same content, different place in the chain


def test_times_are_written_in_utc_whatever_the_offset() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5)))
    record = seal(AuditEvent(who=WHO, action="issue"), 0, GENESIS, local)
    assert record.model_dump(mode="json")["time"] == "2030-01-02T03:04:05.000006Z"


def test_a_line_parses_back_only_in_canonical_form() -> None:
    record = seal(AuditEvent(who=WHO, action="issue"), 0, GENESIS, WHEN)
    line = record.line().decode()
    assert parse_line(line) == record
    with pytest.raises(ValueError, match="canonical"):
        parse_line(line.replace(":", ": ", 1))
    with pytest.raises(ValidationError):
        parse_line(line.replace("}", ',"extra":1}', 1))


def test_events_have_no_place_for_a_raw_secret() -> None:
    password = "correct-horse-battery-staple"
    with pytest.raises(ValidationError):
        AuditEvent(who=WHO, action="issue", fingerprints={"password": password})
    with pytest.raises(ValidationError):
        AuditEvent(who=WHO, action=f"issue {password}")
    with pytest.raises(ValidationError):
        AuditEvent(who=WHO, action="issue", reason=password)


def test_fingerprints_are_keyed_stable_and_never_the_secret() -> None:
    fingerprinter = Fingerprinter(KEY)
    other = Fingerprinter(b"o" * 32)
    for _ in range(200):
        secret = secrets.token_urlsafe(24)
        fp = fingerprinter.fingerprint(secret)
        assert fp.startswith("hmac-sha256:")
        assert fp != secret
        assert secret not in fp
        assert fp == fingerprinter.fingerprint(SecretStr(secret))
        assert fp == fingerprinter.fingerprint(secret.encode())
        assert fp != other.fingerprint(secret)
    hex_secret = secrets.token_hex(32)  # looks like a digest itself
    assert hex_secret not in fingerprinter.fingerprint(hex_secret)
    AuditEvent(who=WHO, action="issue", fingerprints={"password": fingerprinter.fingerprint("x")})


def test_the_fingerprint_key_must_be_long_and_is_never_shown() -> None:
    with pytest.raises(InvalidRequest) as short:
        Fingerprinter(SecretStr("too-short"))
    assert short.value.field == "audit.hmac_key"
    key = "s3cr3t-" * 6
    assert key not in repr(Fingerprinter(SecretStr(key)))
