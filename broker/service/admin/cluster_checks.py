"""Checking a cluster before it is registered: each step's failure names the step.

The steps follow what the broker needs from a member cluster, in the order a person
fixes them: TLS to the API server (the CA bundle), the credential (authentication), the
OIDC discovery document and the JWKS (the non-resource URLs of the broker's RBAC), and
listing pods (the rest of that RBAC). The issuer must be the one the cluster announces.
"""

from __future__ import annotations

from collections.abc import Awaitable
from enum import StrEnum
from typing import Any, TypeVar

import jwt

from broker.clusters import (
    ClusterAuthFailed,
    ClusterClient,
    ClusterForbidden,
    ClusterTlsFailed,
    ClusterUnavailable,
)
from broker.errors import InvalidRequest
from broker.identity.tokens import signing_keys

T = TypeVar("T")
RBAC_HINT = "apply docs/examples/broker-rbac.yaml in the cluster and bind it to the credential"


class Step(StrEnum):
    TLS = "TLS"
    AUTH = "auth"
    RBAC = "RBAC"
    DISCOVERY = "discovery"


class RegistrationFailed(InvalidRequest):
    """The cluster cannot be registered; `step` says which check failed."""

    reason = "CLUSTER_REGISTRATION_FAILED"

    def __init__(self, name: str, step: Step, detail: str) -> None:
        super().__init__(
            "cluster", f"cannot register cluster {name!r}: {step.value} failed: {detail}"
        )
        self.step = step


async def check_cluster(client: ClusterClient) -> dict[str, Any]:
    """Run every check against the cluster; its JWKS when all pass, else RegistrationFailed."""
    name, issuer = client.config.name, client.config.issuer
    discovery = await _step(client, client.openid_configuration())
    announced = discovery.get("issuer")
    if announced != issuer:
        raise RegistrationFailed(
            name,
            Step.DISCOVERY,
            f"the cluster announces issuer {announced!r}, not {issuer!r}; "
            "give its --service-account-issuer",
        )
    jwks = await _step(client, client.jwks())
    try:
        keys = signing_keys(jwks)
    except jwt.PyJWTError as exc:
        raise RegistrationFailed(
            name, Step.DISCOVERY, f"the JWKS has no usable key: {exc}"
        ) from exc
    if not keys:
        raise RegistrationFailed(name, Step.DISCOVERY, "the JWKS has no keys")
    await _step(client, client.list_pods_probe())
    return jwks


async def _step(client: ClusterClient, call: Awaitable[T]) -> T:
    name = client.config.name
    try:
        return await call
    except ClusterTlsFailed as error:
        raise RegistrationFailed(
            name, Step.TLS, f"{error.message} (is the CA bundle the API server's?)"
        ) from error
    except ClusterAuthFailed as error:
        raise RegistrationFailed(
            name, Step.AUTH, f"{error.message} (the credential is not accepted)"
        ) from error
    except ClusterForbidden as error:
        raise RegistrationFailed(name, Step.RBAC, f"{error.message}; {RBAC_HINT}") from error
    except ClusterUnavailable as error:
        raise RegistrationFailed(name, Step.DISCOVERY, error.message) from error


def key_fingerprints(jwks: dict[str, Any]) -> set[str]:
    """Each key of a JWKS as a canonical string of its public parameters (kid excluded),
    so the same key is recognised under any key id."""
    found = set()
    for key in jwks.get("keys", []):
        if isinstance(key, dict):
            public = {k: v for k, v in key.items() if k in ("kty", "crv", "n", "e", "x", "y")}
            found.add(repr(sorted(public.items())))
    return found
