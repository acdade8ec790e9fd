"""Small helpers for tests against the bed's Kubernetes clusters (real API servers)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from kubernetes import client as k8s

from tests.bed.kube import KubeCluster

T = TypeVar("T")
EVENTUALLY_TIMEOUT = 60.0


def eventually(probe: Callable[[], T | None], what: str, timeout: float = EVENTUALLY_TIMEOUT) -> T:
    """Poll until `probe` returns something truthy; controllers and caches act asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


# The client's models make every field Optional; tests read API objects as Any.
def core(api: Any) -> Any:
    return k8s.CoreV1Api(api)


def apps(api: Any) -> Any:
    return k8s.AppsV1Api(api)


def admission(api: Any) -> Any:
    return k8s.AdmissionregistrationV1Api(api)


def new_namespace(api: Any, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    core(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
    return name


def pod(name: str, service_account: str = "default", **meta: Any) -> Any:
    """A pod that is stored but never runs (the bed's clusters have no nodes)."""
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, **meta),
        spec=k8s.V1PodSpec(
            service_account_name=service_account,
            containers=[k8s.V1Container(name="app", image="keyferry/smoke:0.1.0")],
        ),
    )


@dataclass(frozen=True)
class BoundToken:
    cluster: str
    namespace: str
    service_account: str
    pod: str
    pod_uid: str
    audience: str
    token: str


def mint_bound_token(cluster: KubeCluster, prefix: str) -> BoundToken:
    """A namespace, a service account, a pod running as it, and a token bound to that pod."""
    with cluster.api_client() as api:
        v1 = core(api)
        namespace = new_namespace(api, prefix)
        account = "workload"
        v1.create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
        )
        created = v1.create_namespaced_pod(namespace, pod("app", account))
        audience = f"keyferry:{cluster.name}"
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[audience],
                expiration_seconds=600,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name="app", uid=created.metadata.uid
                ),
            )
        )
        issued = v1.create_namespaced_service_account_token(account, namespace, request)
    return BoundToken(
        cluster.name, namespace, account, "app", created.metadata.uid, audience, issued.status.token
    )


def verify(token: str, jwks: dict[str, Any], audience: str, issuer: str) -> dict[str, Any]:
    """Verify a service-account JWT the way an outside party would: by the key its kid names."""
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [key for key in jwt.PyJWKSet.from_dict(jwks).keys if key.key_id == kid]
    if not keys:
        raise jwt.InvalidKeyError(f"no key with kid {kid!r} in this JWKS")
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[0].key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
    )
    return claims


def review(cluster: KubeCluster, token: str, audience: str) -> Any:
    """A TokenReview by the cluster itself; returns its status."""
    with cluster.api_client() as api:
        result: Any = k8s.AuthenticationV1Api(api).create_token_review(
            k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=[audience]))
        )
    return result.status
