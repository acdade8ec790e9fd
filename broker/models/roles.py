"""The role catalog: a keyferry role name mapped to the backend that issues it and its parameters.

Mounts are named *relative to keyferry's mount prefix* (`db-orders` is Vault's
`keyferry/db-orders` with the default prefix), so a role can only ever point at a mount
keyferry owns, and reconcile can list every lease keyferry made under that one prefix.

Every field is checked strictly (no unknown fields, no type coercion); the description
of a field is the hint shown when it is missing or malformed, so it says what to write.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, cast

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from broker.names import ROLE_NAME_PATTERN

from .durations import Duration

MOUNT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
VAULT_ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
KV_PATH_PATTERN = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$"
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$"
DBNAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$"

# What a name template may say: placeholders filled from the pod the credential is for.
TEMPLATE_FIELDS = ("cluster", "namespace", "service_account", "pod")
_TEMPLATE_TEXT = frozenset(string.ascii_lowercase + string.digits + ".-*")

# AWS refuses AssumeRole sessions shorter than 15 minutes or longer than 12 hours.
STS_MIN_TTL = timedelta(minutes=15)
STS_MAX_TTL = timedelta(hours=12)

RoleName = Annotated[str, StringConstraints(pattern=ROLE_NAME_PATTERN)]
MountName = Annotated[str, StringConstraints(pattern=MOUNT_PATTERN)]
VaultRoleName = Annotated[str, StringConstraints(pattern=VAULT_ROLE_PATTERN)]
RoleArn = Annotated[str, StringConstraints(pattern=ROLE_ARN_PATTERN, max_length=2048)]


def check_name_template(template: str) -> str:
    """Accept `{pod}.{namespace}.svc`-style DNS names; reject anything else a template could do."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid template: {exc}") from exc
    for literal, field, spec, conversion in parts:
        if set(literal) - _TEMPLATE_TEXT:
            raise ValueError(
                f"{template!r} may hold only lowercase letters, digits, '.', '-', '*' "
                f"and the placeholders {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            )
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"{template!r} uses {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}; the only placeholders are "
                f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}, with nothing after "
                "the name"
            )
    if not template:
        raise ValueError("a name template must not be empty")
    return template


def render_name(template: str, values: dict[str, str]) -> str:
    """Fill a checked template; `values` must hold every name in TEMPLATE_FIELDS."""
    return template.format_map({f: values[f] for f in TEMPLATE_FIELDS})


NameTemplate = Annotated[str, Field(min_length=1, max_length=253)]
MIN_ROTATION_EVERY = timedelta(minutes=1)


class RotationSchedule(BaseModel):
    """When the broker rotates a role's leases on its own: `every` (an interval since each
    lease's generation began) or `cron` (five fields, UTC). One of the two."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: Duration | None = Field(
        default=None, description="rotate each lease this long after it was issued, like 24h"
    )
    cron: str | None = Field(
        default=None,
        max_length=128,
        description="a five-field crontab in UTC, like '0 3 * * *' (every day at 03:00)",
    )

    @field_validator("every")
    @classmethod
    def _not_too_often(cls, every: timedelta | None) -> timedelta | None:
        if every is not None and every < MIN_ROTATION_EVERY:
            raise ValueError("must be at least 1m; rotating more often would churn Vault")
        return every

    @field_validator("cron")
    @classmethod
    def _crontab(cls, cron: str | None) -> str | None:
        if cron is not None:
            _trigger(cron)
        return cron

    @model_validator(mode="after")
    def _one_of(self) -> RotationSchedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of every (like 24h) or cron (like '0 3 * * *')")
        return self

    def due_after(self, since: datetime) -> datetime:
        """When a generation that began at `since` is due for rotation."""
        if self.every is not None:
            return since + self.every
        assert self.cron is not None  # noqa: S101 (the model validator guarantees one)
        due = _trigger(self.cron).get_next_fire_time(None, since)
        assert due is not None  # noqa: S101 (a valid crontab always fires again)
        return cast("datetime", due)


def _trigger(cron: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(cron, timezone=UTC)
    except ValueError as exc:
        raise ValueError(
            f"{cron!r} is not a five-field crontab (minute hour day month weekday): {exc}"
        ) from None


class _Role(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: RoleName = Field(
        description="the keyferry role name: lowercase letters, digits and '-', "
        "at most 63 characters, like orders-db-ro"
    )
    description: str = Field(default="", description="free text for people")
    rotation: RotationSchedule | None = Field(
        default=None,
        description="rotate this role's leases on a schedule: every: 24h or cron: '0 3 * * *'",
    )


class DatabaseConnection(BaseModel):
    """Where the pod connects: not secret, but part of a usable DSN."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Annotated[str, StringConstraints(pattern=HOST_PATTERN)] = Field(
        description="a host name or IP address, like orders-db.internal"
    )
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: Annotated[str, StringConstraints(pattern=DBNAME_PATTERN)] | None = Field(
        default=None, description="the database to connect to"
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )

    def values(self) -> dict[str, str]:
        shown = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "sslmode": self.sslmode,
        }
        return {key: value for key, value in shown.items() if value is not None}


class DatabaseRole(_Role):
    """Dynamic users from Vault's database engine (PostgreSQL, MariaDB, ...)."""

    kind: Literal["database"] = Field(description="database")
    mount: MountName = Field(
        description="the database engine's mount under keyferry's prefix, like db-orders "
        "(lowercase letters, digits, '-', '_'; one path segment)"
    )
    vault_role: VaultRoleName = Field(
        description="the Vault role on that mount whose creds/<role> endpoint issues users"
    )
    connection: DatabaseConnection | None = Field(
        default=None,
        description="where the database is, handed to the pod with the user and password so "
        "the DSN and pgpass files are complete",
    )


class AwsRole(_Role):
    """AWS keys from Vault's aws engine: an IAM user per lease, or STS session credentials."""

    kind: Literal["aws"] = Field(description="aws")
    mount: MountName = Field(
        description="the aws engine's mount under keyferry's prefix, like aws "
        "(lowercase letters, digits, '-', '_'; one path segment)"
    )
    vault_role: VaultRoleName = Field(description="the Vault role on that mount")
    credential_type: Literal["iam_user", "assumed_role"] = Field(
        description="iam_user (a user per lease, deleted on revoke) or assumed_role "
        "(STS session credentials that live to their TTL)"
    )
    ttl: Duration | None = Field(
        default=None,
        description="how long assumed_role credentials live, 15m to 12h; iam_user leases "
        "take their TTL from the mount",
    )
    role_arn: RoleArn | None = Field(
        default=None,
        description="which of the Vault role's role_arns to assume, like "
        "arn:aws:iam::123456789012:role/reader; only needed when it has several",
    )

    @field_validator("ttl")
    @classmethod
    def _ttl_fits(cls, ttl: timedelta | None, info: ValidationInfo) -> timedelta | None:
        if ttl is None:
            return ttl
        if info.data.get("credential_type") == "iam_user":
            raise ValueError(
                "applies to assumed_role only; an iam_user lease takes its TTL from the "
                "mount (vault write <mount>/config/lease), so remove ttl"
            )
        if not STS_MIN_TTL <= ttl <= STS_MAX_TTL:
            raise ValueError(
                f"STS session credentials live between 15m and 12h; "
                f"{int(ttl.total_seconds())}s is outside that"
            )
        return ttl

    @field_validator("role_arn")
    @classmethod
    def _arn_fits(cls, arn: str | None, info: ValidationInfo) -> str | None:
        if arn is not None and info.data.get("credential_type") == "iam_user":
            raise ValueError("applies to assumed_role only; remove role_arn")
        return arn


class KvRole(_Role):
    """A static value from a KV version 2 mount; rotation means a newer version."""

    kind: Literal["kv"] = Field(description="kv")
    mount: MountName = Field(
        description="the kv-v2 mount under keyferry's prefix, like app-config "
        "(lowercase letters, digits, '-', '_'; one path segment)"
    )
    path: Annotated[str, StringConstraints(pattern=KV_PATH_PATTERN)] = Field(
        description="the secret's path inside the mount, like orders/db, without "
        "leading or trailing '/'"
    )
    version: int | None = Field(
        default=None, gt=0, description="pin one version (a whole number from 1); omit for latest"
    )

    @field_validator("path")
    @classmethod
    def _no_dot_segments(cls, path: str) -> str:
        if any(part in {".", ".."} for part in path.split("/")):
            raise ValueError("must not contain '.' or '..' segments")
        return path


class PkiRole(_Role):
    """A certificate and key from a PKI mount; revoked by serial onto the mount's CRL."""

    kind: Literal["pki"] = Field(description="pki")
    mount: MountName = Field(
        description="the pki mount under keyferry's prefix, like pki-internal "
        "(lowercase letters, digits, '-', '_'; one path segment)"
    )
    vault_role: VaultRoleName = Field(description="the Vault role on that mount")
    common_name: NameTemplate = Field(
        description="a DNS name, with optional placeholders {cluster}, {namespace}, "
        "{service_account}, {pod}, like {pod}.{namespace}.svc"
    )
    alt_names: list[NameTemplate] = Field(
        default_factory=list, description="more DNS names, written like common_name"
    )
    ttl: Duration | None = Field(
        default=None, description="certificate lifetime, like 24h; omit for the Vault role's"
    )

    @field_validator("common_name")
    @classmethod
    def _common_name(cls, template: str) -> str:
        return check_name_template(template)

    @field_validator("alt_names")
    @classmethod
    def _alt_names(cls, templates: list[str]) -> list[str]:
        for index, template in enumerate(templates):
            try:
                check_name_template(template)
            except ValueError as exc:
                raise ValueError(f"entry {index + 1}: {exc}") from None
        return templates


RoleSpec = Annotated[DatabaseRole | AwsRole | KvRole | PkiRole, Field(discriminator="kind")]
ROLE_TYPES: dict[str, type[DatabaseRole | AwsRole | KvRole | PkiRole]] = {
    "database": DatabaseRole,
    "aws": AwsRole,
    "kv": KvRole,
    "pki": PkiRole,
}
