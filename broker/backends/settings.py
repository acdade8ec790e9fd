"""How the broker reaches Vault: a settings group for the broker's settings to nest."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.models import Duration

DEFAULT_POOL_SIZE = 16
DEFAULT_TIMEOUT = 10.0
DEFAULT_MOUNT_PREFIX = "keyferry/"
DEFAULT_TOKEN_CHECK = timedelta(seconds=30)


class AppRoleSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mount: str = Field(default="approle", description="where the approle auth method is enabled")
    role_id: str = Field(min_length=1)
    secret_id: SecretStr


class VaultSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    addr: str = Field(description="Vault's address, like https://vault.internal:8200")
    mount_prefix: str = Field(
        default=DEFAULT_MOUNT_PREFIX,
        description="every keyferry mount lives under this path, so reconcile can list "
        "exactly keyferry's leases",
    )
    pool_size: int = Field(
        default=DEFAULT_POOL_SIZE,
        ge=1,
        le=512,
        description="threads that make Vault calls; hvac blocks, so this caps concurrent calls",
    )
    timeout: float = Field(
        default=DEFAULT_TIMEOUT, gt=0, description="seconds one Vault call may take"
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for Vault's TLS certificate")
    approle: AppRoleSettings | None = None
    token: SecretStr | None = Field(
        default=None, description="a fixed token instead of AppRole, for development only"
    )
    token_check_interval: Duration = Field(
        default=DEFAULT_TOKEN_CHECK,
        description="how often each replica checks its own Vault token and renews it once "
        "2/3 of its TTL has passed (leases die with the token that created them)",
    )

    @field_validator("mount_prefix")
    @classmethod
    def _prefix_shape(cls, prefix: str) -> str:
        if not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix:
            raise ValueError(f"{prefix!r} must be a relative path ending in '/', like keyferry/")
        return prefix

    @model_validator(mode="after")
    def _one_login(self) -> VaultSettings:
        if (self.approle is None) == (self.token is None):
            raise ValueError("set exactly one of approle (role_id, secret_id) or token")
        return self
