"""How the broker reaches one member cluster (declared in the broker's config file for now)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ClusterConfig(BaseModel):
    """A cluster by name, with the kubeconfig context the broker uses to reach it.

    The broker needs, in that cluster: get/list/watch pods, create TokenReviews and GET the
    non-resource URLs /.well-known/openid-configuration and /openid/v1/jwks; nothing more.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="the cluster's keyferry name; its tokens' audience is keyferry:<name>"
    )
    kubeconfig: Path
    context: str | None = Field(default=None, description="kubeconfig context (default: current)")
    issuer: str = Field(min_length=1, description="the cluster's --service-account-issuer")

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid cluster name: use a DNS label (lowercase letters, "
                "digits and '-', at most 63 characters), e.g. 'prod-eu-1'"
            )
        return value

    @property
    def audience(self) -> str:
        return f"keyferry:{self.name}"
