"""The pod a verified token names, its claims checked for form before anything uses them.

The signature proves only that the cluster's API server minted the token; a compromised
member cluster mints whatever it likes. The names go into store keys, Cedar entity ids,
audit records and Vault name templates, and the UID keys a pod's leases: each claim has to
be what Kubernetes itself would have issued, and the UID in its one canonical spelling, so
that two spellings of one UID cannot name two pods.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from broker.errors import Unauthenticated
from broker.policy import Workload

# RFC 1123 label (namespaces) and subdomain (service accounts, pods), as the API server
# validates them.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253


class InvalidClaim(Unauthenticated):
    """A claim of a signed token is not what Kubernetes issues; `claim` names it."""

    def __init__(self, claim: str, why: str) -> None:
        super().__init__(f"the token's claim {claim} {why}; refused")
        self.claim = claim


def workload_of(cluster: str, claims: Mapping[str, Any]) -> Workload:
    """The pod the (verified) claims name; Unauthenticated when they name none, an
    InvalidClaim naming the claim when one is malformed."""
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, Mapping):
        raise Unauthenticated(
            "the token has no kubernetes.io claims; use a projected service-account token"
        )
    pod = k8s.get("pod")
    if not isinstance(pod, Mapping) or not pod.get("name") or not pod.get("uid"):
        raise Unauthenticated(
            "the token is not bound to a pod; the agent must use the projected "
            "token the webhook mounts"
        )
    account = k8s.get("serviceaccount")
    account = account if isinstance(account, Mapping) else {}
    return Workload(
        cluster=cluster,
        namespace=_name("kubernetes.io.namespace", k8s.get("namespace"), DNS_LABEL, LABEL_MAX),
        service_account=_name(
            "kubernetes.io.serviceaccount.name", account.get("name"), DNS_SUBDOMAIN, SUBDOMAIN_MAX
        ),
        pod=_name("kubernetes.io.pod.name", pod["name"], DNS_SUBDOMAIN, SUBDOMAIN_MAX),
        pod_uid=_uid("kubernetes.io.pod.uid", pod["uid"]),
    )


def _name(claim: str, value: object, pattern: re.Pattern[str], most: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidClaim(claim, "is missing or not a string")
    if len(value) > most or pattern.fullmatch(value) is None:
        raise InvalidClaim(claim, f"is not a Kubernetes name (RFC 1123, at most {most} characters)")
    return value


def _uid(claim: str, value: object) -> str:
    if not isinstance(value, str) or len(value) != 36:
        raise InvalidClaim(claim, "is not a UUID")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise InvalidClaim(claim, "is not a UUID") from None
    if canonical != value:
        raise InvalidClaim(claim, "is not a UUID in its lowercase hyphenated form")
    return value
