"""Stolen, borrowed and forged workload tokens against Broker.Issue on the bed.

Each attack is refused with UNAUTHENTICATED and its typed reason, leaves a deny record in
the audit trail (who, as far as a refused token tells, and why), and leaves no lease: no
row in the store for the pod, no new lease in Vault under keyferry's prefix.

Forged tokens are signed with cluster a's real service-account signing key (the bed's
key file) where the attack is about the claims, so only the claim check can refuse them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from kubernetes import client as k8s

from broker.backends import VaultClient
from tests.bed.kube import KubeCluster
from tests.scene.broker import Broker, issue, orders_leases, refused
from tests.scene.kube_helpers import BoundToken, core, eventually, pod
from tests.scene.workloads import mint

from .attack_scene import Exposure, assert_no_lease, denials, reason

pytestmark = pytest.mark.bed


async def attack(
    broker: Broker,
    token: BoundToken,
    presented: str,
    vault_leases: VaultClient,
    exposure: Exposure,
) -> tuple[grpc.RpcError, dict[str, Any]]:
    """Present `presented` as `token`'s pod; the refusal and its audit record."""
    before = await orders_leases(vault_leases)
    denied_before = len(denials(broker, "issue"))
    error = await refused(broker, presented)
    exposure.refusal(error)
    await assert_no_lease(broker, token, vault_leases, before)
    records = denials(broker, "issue")
    assert len(records) == denied_before + 1, "the refusal is not in the audit trail"
    return error, records[-1]


def assert_unauthenticated(error: grpc.RpcError, record: dict[str, Any], why: str) -> None:
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == why
    assert record["reason"] == why


# --- tokens the API server really issued, presented where they do not belong -------------------


async def test_a_token_of_cluster_b_presented_for_cluster_a(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient, exposure: Exposure
) -> None:
    stolen = mint(kube_clusters["b"], audience="keyferry:a")
    error, record = await attack(broker, stolen, stolen.token, leases, exposure)
    assert_unauthenticated(error, record, "TOKEN_INVALID")
    assert record["who"] == {"kind": "workload", "name": "unauthenticated"}


async def test_a_token_of_cluster_b_presented_for_c_with_the_same_issuer(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient, exposure: Exposure
) -> None:
    assert kube_clusters["b"].issuer == kube_clusters["c"].issuer
    stolen = mint(kube_clusters["b"], audience="keyferry:c")
    error, record = await attack(broker, stolen, stolen.token, leases, exposure)
    assert_unauthenticated(error, record, "TOKEN_INVALID")


@pytest.mark.parametrize(
    ("audience", "why"),
    [("vault", "TOKEN_INVALID"), ("keyferry:nowhere", "CLUSTER_UNKNOWN")],
)
async def test_a_token_with_the_wrong_audience(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    exposure: Exposure,
    audience: str,
    why: str,
) -> None:
    token = mint(kube_clusters["a"], audience=audience)
    error, record = await attack(broker, token, token.token, leases, exposure)
    assert_unauthenticated(error, record, why)


async def test_a_deleted_pods_token(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient, exposure: Exposure
) -> None:
    cluster = kube_clusters["a"]
    token = mint(cluster)
    with cluster.api_client() as api:
        core(api).delete_namespaced_pod(token.pod, token.namespace, grace_period_seconds=0)
        eventually(lambda: _pod_uid(api, token) is None, "the pod is gone")
    error, record = await attack(broker, token, token.token, leases, exposure)
    assert_unauthenticated(error, record, "TOKEN_INVALID")
    assert "no longer exists" in (error.details() or "")
    assert (record["pod"], record["pod_uid"]) == (token.pod, token.pod_uid)


async def test_a_token_replayed_after_its_pods_uid_changed(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient, exposure: Exposure
) -> None:
    cluster = kube_clusters["a"]
    token = mint(cluster)
    with cluster.api_client() as api:
        core(api).delete_namespaced_pod(token.pod, token.namespace, grace_period_seconds=0)
        eventually(lambda: _pod_uid(api, token) is None, "the pod is gone")
        core(api).create_namespaced_pod(token.namespace, pod(token.pod, token.service_account))
        new_uid = eventually(lambda: _pod_uid(api, token), "the pod is back under its name")
    assert new_uid != token.pod_uid
    error, record = await attack(broker, token, token.token, leases, exposure)
    assert_unauthenticated(error, record, "TOKEN_INVALID")
    assert "UID changed" in (error.details() or "")
    assert record["pod_uid"] == token.pod_uid


def _pod_uid(api: Any, token: BoundToken) -> str | None:
    try:
        found = core(api).read_namespaced_pod(token.pod, token.namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return str(found.metadata.uid)


# --- forged tokens ------------------------------------------------------------------------------


def signing_key(cluster: KubeCluster) -> Any:
    """Cluster a's real service-account signing key, from the bed's key file."""
    return load_pem_private_key((cluster.folder / "pki" / "sa.key").read_bytes(), password=None)


def claims_of(token: BoundToken) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token.token)
    claims = jwt.decode(token.token, options={"verify_signature": False})
    return header, claims


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def _expired(cluster: KubeCluster, token: BoundToken) -> str:
    header, claims = claims_of(token)
    claims.update(iat=_now() - 7200, nbf=_now() - 7200, exp=_now() - 3600)
    return jwt.encode(claims, signing_key(cluster), "RS256", headers={"kid": header["kid"]})


def _not_yet_valid(cluster: KubeCluster, token: BoundToken) -> str:
    header, claims = claims_of(token)
    claims.update(iat=_now() + 3600, nbf=_now() + 3600, exp=_now() + 7200)
    return jwt.encode(claims, signing_key(cluster), "RS256", headers={"kid": header["kid"]})


def _unsigned(cluster: KubeCluster, token: BoundToken) -> str:
    header, claims = claims_of(token)
    return f"{_part({'alg': 'none', 'kid': header['kid'], 'typ': 'JWT'})}.{_part(claims)}."


def _wrong_key(cluster: KubeCluster, token: BoundToken) -> str:
    header, claims = claims_of(token)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other, "RS256", headers={"kid": header["kid"]})


def _tampered(cluster: KubeCluster, token: BoundToken) -> str:
    """The real token with its claims edited (another namespace) and its signature kept."""
    real_header, _, real_signature = token.token.split(".")
    _, claims = claims_of(token)
    claims["kubernetes.io"]["namespace"] = "kube-system"
    return ".".join([real_header, _part(claims), real_signature])


def _resigned(cluster: KubeCluster, token: BoundToken) -> str:
    """The real token's claims edited (another namespace), signed anew by the attacker's key
    under the cluster's key id."""
    header, claims = claims_of(token)
    claims["kubernetes.io"]["namespace"] = "kube-system"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other, "RS256", headers={"kid": header["kid"]})


def _hmac_with_public_key(cluster: KubeCluster, token: BoundToken) -> str:
    """Algorithm confusion: HS256 keyed with the cluster's public key (which anyone can read
    from the JWKS); written by hand, PyJWT refuses to make it."""
    header, claims = claims_of(token)
    public = (cluster.folder / "pki" / "sa.pub").read_bytes()
    signing_input = f"{_part({'alg': 'HS256', 'kid': header['kid'], 'typ': 'JWT'})}.{_part(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _part(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FORGERIES: dict[str, Callable[[KubeCluster, BoundToken], str]] = {
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
    "alg-none": _unsigned,
    "wrong-key": _wrong_key,
    "tampered": _tampered,
    "re-signed": _resigned,
    "hmac-with-public-key": _hmac_with_public_key,
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_a_forged_token(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    exposure: Exposure,
    forgery: str,
) -> None:
    cluster = kube_clusters["a"]
    token = mint(cluster)
    forged = FORGERIES[forgery](cluster, token)
    error, record = await attack(broker, token, forged, leases, exposure)
    assert_unauthenticated(error, record, "TOKEN_INVALID")
    assert record["who"] == {"kind": "workload", "name": "unauthenticated"}


async def test_the_real_key_with_honest_claims_is_accepted(
    broker: Broker, kube_clusters: dict[str, KubeCluster], exposure: Exposure
) -> None:
    """The control for the forgeries: the same signing path with untouched claims issues."""
    cluster = kube_clusters["a"]
    token = mint(cluster)
    header, claims = claims_of(token)
    honest = jwt.encode(claims, signing_key(cluster), "RS256", headers={"kid": header["kid"]})
    issued = await issue(broker, honest)
    exposure.handed_out(*issued.credential.values.values())
    assert issued.lease.role == "orders-db-ro"
