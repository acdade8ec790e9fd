"""Broker settings from a YAML file and the environment, and what a bad file is told."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.settings import SettingsInvalid, load_settings

DOCS = Path(__file__).parents[2] / "docs" / "examples"
KEY = base64.b64encode(b"k" * 32).decode()
BAD = """\
vault:
  addr: http://127.0.0.1:8200
  token: dev
audit:
  log: /tmp/audit.jsonl
  hmac_key: short
sealing:
  key: not-base64!
policies: [/nonexistent/policies.cedar]
workload:
  prot: 8443
"""


def test_a_bad_file_names_each_field_its_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BAD)
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(path)
    message = caught.value.message
    assert message.startswith(f"{path} is not a valid broker configuration:")
    assert f"{path}:6: audit.hmac_key: must be at least 32 bytes; generate one with" in message
    assert f"{path}:8: sealing.key: is not base64; generate one with" in message
    assert f"{path}:9: policies: no such file: /nonexistent/policies.cedar" in message
    assert f"{path}:11: workload.prot: is not a setting" in message
    assert "KEYFERRY_WORKLOAD__PROT" in message


def test_a_missing_group_says_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("vault: {addr: http://v:8200, token: t}\n")
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(path)
    assert "audit: is required" in caught.value.message
    assert "sealing: is required" in caught.value.message


def test_the_example_config_loads_with_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    monkeypatch.setenv("KEYFERRY_SEALING__KEY", KEY)
    monkeypatch.setenv("KEYFERRY_AUDIT__HMAC_KEY", "h" * 40)
    monkeypatch.setenv("KEYFERRY_POLICIES", f'["{DOCS / "policies.cedar"}"]')
    monkeypatch.setenv("KEYFERRY_ROLES", str(DOCS / "roles.yaml"))
    monkeypatch.setenv("KEYFERRY_WORKLOAD__TLS_CERT", str(cert))
    monkeypatch.setenv("KEYFERRY_WORKLOAD__TLS_KEY", str(key))
    monkeypatch.setenv("KEYFERRY_VAULT__APPROLE__SECRET_ID", "from-env")
    for name in ("tls_cert", "tls_key", "client_ca"):
        monkeypatch.setenv(f"KEYFERRY_ADMIN__{name.upper()}", str(cert))
    settings = load_settings(DOCS / "broker.yaml")
    assert settings.admin.enabled
    assert settings.admin.port == 8444
    assert settings.limits.pod_issue_burst == 32
    assert settings.vault.approle is not None
    assert settings.vault.approle.secret_id.get_secret_value() == "from-env"
    assert settings.workload.port == 8443  # the file's value survives next to env ones
    assert settings.workload.tls_cert == cert
    assert settings.sealing.key_bytes() == b"k" * 32
    assert settings.clusters[0].audience == "keyferry:prod-eu-1"
    assert "from-env" not in repr(settings)


def test_serve_with_a_bad_config_exits_2_with_the_message(tmp_path: Path) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(BAD)
    result = CliRunner().invoke(app, ["broker", "serve", "--config", str(path)])
    assert result.exit_code == 2
    assert "sealing.key: is not base64" in result.output
