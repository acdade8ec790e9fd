"""Broker settings from a YAML file and the environment, and what a bad file is told."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.config_file import load_or_exit
from broker.cli.main import app
from broker.moved_settings import MOVED, SettingMoved
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
    for name in ("tls_cert", "tls_key", "client_ca", "revoked_operators"):
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


def _valid(tmp_path: Path, extra: str) -> Path:
    """A file that loads, with `extra` (top-level YAML) appended."""
    policies = tmp_path / "policies.cedar"
    policies.write_text("")
    path = tmp_path / "broker.yaml"
    path.write_text(
        "vault: {addr: 'http://127.0.0.1:8200', token: dev}\n"
        f"audit: {{log: {tmp_path / 'audit.jsonl'}, hmac_key: {'h' * 40}}}\n"
        f"sealing: {{key: '{KEY}'}}\n"
        f"policies: [{policies}]\n" + extra
    )
    return path


def test_each_jobs_interval_lives_with_its_subsystem(tmp_path: Path) -> None:
    path = _valid(
        tmp_path,
        "rotation: {resume_interval: 2s, schedule_interval: 3s}\n"
        "revocation: {interval: 4s, backoff: 5s, backoff_cap: 6m}\n"
        "reconcile: {interval: 7m, orphan_age: 8m}\n"
        "pods: {sweep_interval: 9s}\n"
        "tokens: {jwks_refresh_interval: 10m}\n"
        "store: {statistics_interval: 11h}\n"
        "scheduler: {jitter: 0.2, leadership: 3s}\n",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", SettingMoved)
        settings = load_settings(path)
    assert settings.rotation.resume_interval == timedelta(seconds=2)
    assert settings.rotation.schedule_interval == timedelta(seconds=3)
    assert settings.revocation.interval == timedelta(seconds=4)
    assert settings.revocation.backoff == timedelta(seconds=5)
    assert settings.revocation.backoff_cap == timedelta(minutes=6)
    assert settings.reconcile.interval == timedelta(minutes=7)
    assert settings.reconcile.orphan_age == timedelta(minutes=8)
    assert settings.pods.sweep_interval == timedelta(seconds=9)
    assert settings.tokens.jwks_refresh_interval == timedelta(minutes=10)
    assert settings.store.statistics_interval == timedelta(hours=11)
    assert settings.scheduler.leadership == timedelta(seconds=3)


def test_an_old_key_still_loads_at_its_new_place_with_a_warning(tmp_path: Path) -> None:
    path = _valid(
        tmp_path,
        "rotation: {grace: 1m, revoke_interval: 2s, orphan_age: 3m}\n"
        "scheduler: {leadership: 1s, vault_token: 4s, audit_checkpoint: 5m}\n",
    )
    with pytest.warns(SettingMoved) as caught:
        settings = load_settings(path)
    moves = {w.message.old: w.message.new for w in caught if isinstance(w.message, SettingMoved)}
    assert moves == {
        "rotation.revoke_interval": ("revocation.interval", "rotation.resume_interval"),
        "rotation.orphan_age": ("reconcile.orphan_age",),
        "scheduler.vault_token": ("vault.token_check_interval",),
        "scheduler.audit_checkpoint": ("audit.checkpoint_interval",),
    }
    # One old key that drove two jobs sets both of their new keys.
    assert settings.revocation.interval == settings.rotation.resume_interval == timedelta(seconds=2)
    assert settings.reconcile.orphan_age == timedelta(minutes=3)
    assert settings.vault.token_check_interval == timedelta(seconds=4)
    assert settings.audit.checkpoint_interval == timedelta(minutes=5)
    assert settings.rotation.grace == timedelta(minutes=1)  # the group's other keys stay
    assert settings.scheduler.leadership == timedelta(seconds=1)


def test_an_old_key_beside_its_new_key_with_another_value_names_both(tmp_path: Path) -> None:
    path = _valid(
        tmp_path,
        "scheduler:\n  revoke_backoff: 5s\nrevocation:\n  backoff: 7s\n",
    )
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(path)
    assert caught.value.problems == [
        f"{path}:6, {path}:8: scheduler.revoke_backoff was renamed to revocation.backoff and "
        "both are given with different values; keep only revocation.backoff"
    ]


def test_an_old_key_beside_its_new_key_with_the_same_value_loads(tmp_path: Path) -> None:
    path = _valid(tmp_path, "scheduler: {pod_sweep: 9s}\npods: {sweep_interval: 9s}\n")
    with pytest.warns(SettingMoved):
        settings = load_settings(path)
    assert settings.pods.sweep_interval == timedelta(seconds=9)


def test_an_old_variable_moves_too_and_conflicts_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _valid(tmp_path, "")
    monkeypatch.setenv("KEYFERRY_SCHEDULER__JWKS_REFRESH", "2m")
    with pytest.warns(SettingMoved):
        settings = load_settings(path)
    assert settings.tokens.jwks_refresh_interval == timedelta(minutes=2)
    monkeypatch.setenv("KEYFERRY_TOKENS__JWKS_REFRESH_INTERVAL", "3m")
    with pytest.raises(SettingsInvalid) as caught:
        load_settings(path)
    assert caught.value.problems == [
        "KEYFERRY_SCHEDULER__JWKS_REFRESH, KEYFERRY_TOKENS__JWKS_REFRESH_INTERVAL: "
        "scheduler.jwks_refresh was renamed to tokens.jwks_refresh_interval and both are "
        "given with different values; keep only tokens.jwks_refresh_interval"
    ]


def test_commands_print_a_moved_key_as_a_warning_line(tmp_path: Path) -> None:
    path = _valid(tmp_path, "scheduler: {store_statistics: 2h}\n")
    with pytest.warns(SettingMoved):  # load_or_exit prints it instead of warning again
        settings = load_settings(path)
    assert settings.store.statistics_interval == timedelta(hours=2)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), warnings.catch_warnings():
        warnings.simplefilter("error", SettingMoved)
        printed = load_or_exit(path)
    assert printed == settings
    assert errors.getvalue().startswith(
        "warning: setting scheduler.store_statistics is deprecated and is removed after "
        "0.1.0; write store.statistics_interval instead"
    )


def test_the_upgrade_notes_list_every_moved_key() -> None:
    text = (DOCS.parent / "operations.md").read_text()
    table = text.split("| old key (0.1.0) | new key |")[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([a-z_.]+)` \| (.+) \|$", table, flags=re.MULTILINE)
    listed = {old: tuple(re.findall(r"`([a-z_.]+)`", new)) for old, new in rows}
    assert listed == MOVED
