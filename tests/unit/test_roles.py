"""The role catalog: what parses, and for what does not, the exact role, field and line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker import errors
from broker.errors import InvalidRequest
from broker.models import (
    AwsRole,
    DatabaseRole,
    InvalidRoles,
    KvRole,
    PkiRole,
    RotationSchedule,
    load_roles,
    parse_duration,
    parse_roles,
    render_name,
)
from broker.server import convert

GOOD = """
- name: orders-db-ro
  kind: database
  mount: db-orders
  vault_role: ro
- name: s3-reader
  kind: aws
  mount: aws
  vault_role: reader
  credential_type: assumed_role
  ttl: 1h
- name: s3-user
  kind: aws
  mount: aws
  vault_role: user
  credential_type: iam_user
- name: app-config
  kind: kv
  mount: app-config
  path: orders/settings
  version: 3
- name: internal-tls
  kind: pki
  mount: pki-internal
  vault_role: internal
  common_name: "{pod}.{namespace}.svc"
  alt_names: ["{service_account}.{namespace}.svc"]
  ttl: 24h
"""


def problems_of(text: str) -> list[tuple[str | None, str, int | None]]:
    with pytest.raises(InvalidRoles) as caught:
        parse_roles(text, "roles.yaml")
    return [(p.role, p.field, p.line) for p in caught.value.problems]


def test_a_good_catalog_parses_into_each_kind() -> None:
    roles = parse_roles(GOOD, "roles.yaml")
    assert [type(r) for r in roles] == [DatabaseRole, AwsRole, AwsRole, KvRole, PkiRole]
    s3 = roles[1]
    assert isinstance(s3, AwsRole)
    assert s3.ttl == timedelta(hours=1)
    kv = roles[3]
    assert isinstance(kv, KvRole)
    assert kv.version == 3


def test_an_empty_list_is_an_empty_catalog() -> None:
    assert parse_roles("[]", "roles.yaml") == []


def test_a_missing_field_is_named_with_its_line_and_what_to_write() -> None:
    text = "- name: orders-db-ro\n  kind: database\n  mount: db-orders\n"
    with pytest.raises(InvalidRoles) as caught:
        parse_roles(text, "roles.yaml")
    (problem,) = caught.value.problems
    assert (problem.role, problem.field, problem.line) == ("orders-db-ro", "vault_role", 1)
    assert str(problem).startswith("roles.yaml:1: role 'orders-db-ro': vault_role: is required")
    assert "creds/<role>" in problem.problem
    assert caught.value.field == "vault_role"
    assert isinstance(caught.value, errors.InvalidRequest)


def test_an_unknown_field_suggests_the_right_one() -> None:
    text = "- name: db\n  kind: database\n  mount: db\n  vault_role: ro\n  vault_rol: ro\n"
    with pytest.raises(InvalidRoles) as caught:
        parse_roles(text, "roles.yaml")
    (problem,) = caught.value.problems
    assert (problem.field, problem.line) == ("vault_rol", 5)
    assert "did you mean 'vault_role'?" in problem.problem


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("name: Orders_DB\n  kind: database\n  mount: db\n  vault_role: ro", "name"),
        ("name: db\n  kind: vaultdb\n  mount: db\n  vault_role: ro", "kind"),
        ("name: db\n  mount: db\n  vault_role: ro", "kind"),
        ("name: db\n  kind: database\n  mount: keyferry/db\n  vault_role: ro", "mount"),
        ("name: db\n  kind: database\n  mount: db\n  vault_role: 7", "vault_role"),
        (
            "name: db\n  kind: database\n  mount: db\n  vault_role: ro\n"
            "  connection:\n    host: 'db/../x'",
            "connection[host]",
        ),
        (
            "name: db\n  kind: database\n  mount: db\n  vault_role: ro\n"
            "  connection:\n    host: db.internal\n    port: 70000",
            "connection[port]",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n  credential_type: root",
            "credential_type",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n"
            "  credential_type: iam_user\n  ttl: 1h",
            "ttl",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n"
            "  credential_type: assumed_role\n  ttl: 5m",
            "ttl",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n"
            "  credential_type: assumed_role\n  ttl: soon",
            "ttl",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n"
            "  credential_type: iam_user\n  role_arn: arn:aws:iam::123456789012:role/x",
            "role_arn",
        ),
        (
            "name: s3\n  kind: aws\n  mount: aws\n  vault_role: r\n"
            "  credential_type: assumed_role\n  role_arn: reader",
            "role_arn",
        ),
        ("name: kv\n  kind: kv\n  mount: kv\n  path: /etc/x", "path"),
        ("name: kv\n  kind: kv\n  mount: kv\n  path: a/../b", "path"),
        ("name: kv\n  kind: kv\n  mount: kv\n  path: a\n  version: 0", "version"),
        ('name: kv\n  kind: kv\n  mount: kv\n  path: a\n  version: "3"', "version"),
        (
            "name: tls\n  kind: pki\n  mount: pki\n  vault_role: r\n"
            "  common_name: '{pod.__class__}.svc'",
            "common_name",
        ),
        (
            "name: tls\n  kind: pki\n  mount: pki\n  vault_role: r\n  common_name: '{pod!r}.svc'",
            "common_name",
        ),
        (
            "name: tls\n  kind: pki\n  mount: pki\n  vault_role: r\n  common_name: '{node}.svc'",
            "common_name",
        ),
        (
            "name: tls\n  kind: pki\n  mount: pki\n  vault_role: r\n  common_name: 'Web Server'",
            "common_name",
        ),
        (
            "name: tls\n  kind: pki\n  mount: pki\n  vault_role: r\n"
            "  common_name: 'x.svc'\n  alt_names: ['ok.svc', '{pod:>9}']",
            "alt_names",
        ),
    ],
)
def test_each_malformed_field_is_named(entry: str, field: str) -> None:
    assert [f for _, f, _ in problems_of(f"- {entry}\n")] == [field]


def test_every_problem_of_a_file_is_reported_with_its_role() -> None:
    text = (
        "- name: a\n  kind: database\n  mount: db\n"  # no vault_role
        "- kind: kv\n  mount: kv\n  path: x\n"  # no name
        "- name: a\n  kind: kv\n  mount: kv\n  path: x\n"  # name used twice
        "- just a string\n"
    )
    assert problems_of(text) == [
        ("a", "vault_role", 1),
        (None, "name", 4),
        ("a", "name", 7),
        (None, "(entry)", 11),
    ]


def test_a_problem_without_a_name_names_the_position() -> None:
    with pytest.raises(InvalidRoles) as caught:
        parse_roles("- kind: kv\n  mount: kv\n  path: x\n", "roles.yaml")
    assert str(caught.value.problems[0]).startswith("roles.yaml:1: role #1: name: is required")


@pytest.mark.parametrize("text", ["", "name: a\nkind: kv\n", "- [a\n"])
def test_a_file_that_is_not_a_list_of_roles_says_so(text: str) -> None:
    with pytest.raises(InvalidRoles) as caught:
        parse_roles(text, "roles.yaml")
    (problem,) = caught.value.problems
    assert problem.field == "(file)"
    assert str(problem).startswith("roles.yaml")


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "roles.yaml"
    path.write_text("- name: a\n  kind: kv\n  mount: kv\n")
    with pytest.raises(InvalidRoles) as caught:
        load_roles(path)
    assert str(caught.value) == (
        f"{path}:1: role 'a': path: is required: the secret's path inside the mount, "
        "like orders/db, without leading or trailing '/'"
    )
    with pytest.raises(InvalidRoles, match="cannot be read"):
        load_roles(tmp_path / "missing.yaml")


def test_roles_are_strict_when_built_in_code() -> None:
    with pytest.raises(ValidationError):
        KvRole.model_validate(
            {"name": "kv", "kind": "kv", "mount": "kv", "path": "a", "version": "1"}
        )


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), (45, 45)]
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["0s", "1.5h", "-5m", "", True, 0])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|longer than zero"):
        parse_duration(bad)


def test_name_templates_render_only_the_pod_identity() -> None:
    values = {"cluster": "a", "namespace": "shop", "service_account": "web", "pod": "web-0"}
    assert render_name("{pod}.{namespace}.{cluster}.svc", values) == "web-0.shop.a.svc"
    assert render_name("{service_account}.svc", values) == "web.svc"


# -- rotation schedules ---------------------------------------------------------------------


def test_a_schedule_is_an_interval_or_a_crontab_and_says_when_a_lease_is_due() -> None:
    began = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert RotationSchedule(every=timedelta(hours=2)).due_after(began) == began + timedelta(hours=2)
    nightly = RotationSchedule(cron="0 3 * * *")
    assert nightly.due_after(began) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "exactly one of every"),
        ({"every": "1h", "cron": "0 3 * * *"}, "exactly one of every"),
        ({"every": "10s"}, "at least 1m"),
        ({"cron": "every night"}, "five-field crontab"),
        ({"cron": "0 25 * * *"}, "five-field crontab"),
    ],
)
def test_a_bad_schedule_is_refused_with_what_to_write(fields: dict[str, str], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        RotationSchedule.model_validate(fields)


def test_a_schedule_and_a_connection_survive_the_api_round_trip() -> None:
    role = DatabaseRole.model_validate(
        {
            "name": "orders-db-ro",
            "kind": "database",
            "mount": "db-orders",
            "vault_role": "ro",
            "rotation": {"cron": "0 3 * * *"},
            "connection": {"host": "orders-db.internal", "dbname": "orders"},
        }
    )
    assert convert.role_spec(convert.spec_message(role)) == role
    hourly = role.model_copy(update={"rotation": RotationSchedule(every=timedelta(hours=1))})
    assert convert.role_spec(convert.spec_message(hourly)) == hourly


def test_a_bad_schedule_over_the_api_names_its_field() -> None:
    message = convert.spec_message(
        DatabaseRole(name="x", kind="database", mount="db", vault_role="r")
    )
    message.rotation.cron = "nope"
    with pytest.raises(InvalidRequest) as caught:
        convert.role_specs([message])
    assert caught.value.field == "roles[0].rotation.cron"
