"""Models shared across the broker (and, later, the injector): roles, credentials, leases."""

from .catalog import InvalidRoles, RoleProblem, load_roles, parse_roles
from .credentials import (
    BackendKind,
    Credential,
    Ending,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    VaultLease,
)
from .durations import Duration, parse_duration
from .pods import PodKey
from .problems import describe as describe_problems
from .problems import problems as validation_problems
from .roles import (
    AwsRole,
    DatabaseConnection,
    DatabaseRole,
    KvRole,
    PkiRole,
    RoleSpec,
    RotationSchedule,
    render_name,
)

__all__ = [
    "AwsRole",
    "BackendKind",
    "Credential",
    "DatabaseConnection",
    "DatabaseRole",
    "Duration",
    "Ending",
    "InvalidRoles",
    "IssueContext",
    "IssuedSecret",
    "KvRole",
    "Lifecycle",
    "PkiRole",
    "PodKey",
    "RoleProblem",
    "RoleSpec",
    "RotationSchedule",
    "VaultLease",
    "describe_problems",
    "load_roles",
    "parse_duration",
    "parse_roles",
    "render_name",
    "validation_problems",
]
