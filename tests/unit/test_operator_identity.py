"""Operator certificates (issue 18): short-lived, renewed with the same identity, a serial
deny-list read again when it changes, approvals that compare the person, and `keyferry
admin init` keeping the CA key apart from what the broker reads."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from broker.cli.main import app
from broker.errors import InvalidRequest
from broker.identity.admin_pki import OPERATOR_VALIDITY, create_ca
from broker.identity.operators import (
    DenyListUnreadable,
    OperatorRevoked,
    RevokedSerials,
    operator_from_certificate,
    parse_serials,
)
from broker.policy import Operator
from broker.service.admin.access_grants import is_requester
from broker.service.common.grant_terms import check_grant_ask, new_grant

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_operator_certificates_are_short_lived_and_renewed_with_their_identity(
    tmp_path: Path,
) -> None:
    ca = create_ca(tmp_path)
    first = ca.issue_operator("bob", ["platform"], identity="bob@example.com")
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= OPERATOR_VALIDITY + dt.timedelta(minutes=5)
    bob = operator_from_certificate(first.cert_path.read_bytes())
    assert (bob.name, bob.groups, bob.identity) == ("bob", ("platform",), "bob@example.com")
    renewed = ca.renew_operator("bob", dt.timedelta(hours=2))
    again = x509.load_pem_x509_certificate(renewed.cert_path.read_bytes())
    assert again.serial_number != cert.serial_number
    assert operator_from_certificate(renewed.cert_path.read_bytes()) == bob
    with pytest.raises(InvalidRequest):
        ca.issue_operator("eve", [], validity=dt.timedelta(days=30))
    with pytest.raises(InvalidRequest):
        ca.renew_operator("nobody")
    plain = operator_from_certificate(ca.issue_operator("carol", []).cert_path.read_bytes())
    assert (plain.identity, plain.person) == (None, "cn:carol")


def test_approvals_compare_the_person_not_the_name() -> None:
    ask = check_grant_ask("orders-db-ro", dt.timedelta(minutes=30), "INC-1", dt.timedelta(hours=8))
    dev = Operator(name="alice-dev", groups=("developers",), identity="alice@example.com")
    grant = new_grant(ask, dev.name, NOW, dt.timedelta(hours=1), dev.person)
    alice_sec = Operator(name="alice-sec", groups=("security",), identity="alice@example.com")
    sam = Operator(name="sam", groups=("security",), identity="sam@example.com")
    assert is_requester(dev, grant)
    assert is_requester(alice_sec, grant)
    assert not is_requester(sam, grant)
    legacy = grant.model_copy(update={"requester_identity": None})  # from before identities
    assert not is_requester(alice_sec, legacy)
    assert is_requester(Operator(name="alice-dev"), legacy)
    # a name without identity never passes for an identity, nor the other way round
    assert Operator(name="alice@example.com").person != alice_sec.person


def test_the_deny_list_is_read_again_when_it_changes_and_fails_closed(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    pem = ca.issue_operator("bob", []).cert_path.read_bytes()
    serial = x509.load_pem_x509_certificate(pem).serial_number
    deny = tmp_path / "revoked"
    deny.write_text("# none yet\n")
    revoked = RevokedSerials(deny)
    revoked.check(pem)
    deny.write_text(f"# bob\n{serial:x}  # revoked\n")
    os.utime(deny, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    with pytest.raises(OperatorRevoked, match="was revoked"):
        revoked.check(pem)
    deny.unlink()
    with pytest.raises(DenyListUnreadable):
        revoked.check(pem)
    with pytest.raises(ValueError, match="line 2"):
        parse_serials("ab:cd\nnot-hex\n")


def test_init_keeps_the_ca_key_apart_and_revoke_operator_lists_a_serial(tmp_path: Path) -> None:
    runner = CliRunner()
    ca_dir, context = tmp_path / "ca", tmp_path / "context.yaml"
    made = runner.invoke(
        app,
        [
            "admin",
            "init",
            "--operator",
            "ann",
            "--dir",
            str(ca_dir),
            "--context-file",
            str(context),
        ],
    )
    assert made.exit_code == 0, made.output
    section = yaml.safe_load(made.output.split("(broker.yaml):", 1)[1])["admin"]
    broker_dir = (tmp_path / "broker-admin").resolve()
    assert {Path(section[k]).parent for k in ("tls_cert", "tls_key", "client_ca")} == {broker_dir}
    assert not (broker_dir / "ca.key").exists()
    assert (ca_dir / "ca.key").exists()
    deny = tmp_path / "revoked"
    revoke = ["admin", "revoke-operator", "ann", "--dir", str(ca_dir), "--deny-list", str(deny)]
    assert runner.invoke(app, revoke).exit_code == 0
    assert "already" in runner.invoke(app, revoke).output
    serial = x509.load_pem_x509_certificate(
        (ca_dir / "operators" / "ann.crt").read_bytes()
    ).serial_number
    assert parse_serials(deny.read_text()) == {serial}
    renew = runner.invoke(app, ["admin", "renew-operator", "ann", "--dir", str(ca_dir)])
    assert renew.exit_code == 0, renew.output
    same = ["admin", "init", "--operator", "x", "--dir", str(ca_dir), "--broker-dir", str(ca_dir)]
    assert runner.invoke(app, [*same, "--force"]).exit_code == 2
