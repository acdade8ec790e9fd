"""Token verification logic with locally made keys; tests/integration covers real clusters."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.errors import Unauthenticated
from broker.identity import ClusterKeys, InvalidClaim, KeyRefreshPolicy, TokenVerifier

POD_UID = "6f1c0b53-2f0e-4b8e-9a52-3f3d2a1c9e07"

SHARED_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _keypair(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return private, jwk


KEY_A, JWK_A = _keypair("a-1")
KEY_B, JWK_B = _keypair("b-1")
KEY_A2, JWK_A2 = _keypair("a-2")


def _now() -> dt.datetime:
    # Read at each use: a time taken at collection lets a long suite expire the tokens.
    return dt.datetime.now(dt.UTC)


def _claims(cluster: str = "a", **changes: Any) -> dict[str, Any]:
    now = _now()
    claims: dict[str, Any] = {
        "iss": SHARED_ISSUER,
        "aud": [f"keyferry:{cluster}"],
        "sub": "system:serviceaccount:orders:app",
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=10),
        "kubernetes.io": {
            "namespace": "orders",
            "serviceaccount": {"name": "app", "uid": "sa-uid"},
            "pod": {"name": "app-1", "uid": POD_UID},
        },
    }
    claims.update(changes)
    return claims


def _with_k8s(k8s: dict[str, Any]) -> dict[str, Any]:
    claims = _claims()
    claims["kubernetes.io"] = k8s
    return claims


def _token(claims: dict[str, Any], key: Any = KEY_A, kid: str = "a-1", alg: str = "RS256") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def _verifier(refresh_a: Any = None) -> TokenVerifier:
    return TokenVerifier(
        {
            "a": ClusterKeys("a", SHARED_ISSUER, {"keys": [JWK_A]}, refresh=refresh_a),
            "b": ClusterKeys("b", SHARED_ISSUER, {"keys": [JWK_B]}),
        }
    )


def test_a_valid_token_proves_its_pod() -> None:
    workload = _verifier().verify(_token(_claims()))
    assert (workload.cluster, workload.namespace, workload.service_account) == (
        "a",
        "orders",
        "app",
    )
    assert (workload.pod, workload.pod_uid) == ("app-1", POD_UID)


def test_same_issuer_other_cluster_key_is_rejected() -> None:
    # Signed by cluster B's key but claiming cluster A's audience; both share the issuer.
    with pytest.raises(Unauthenticated, match="not a key of cluster 'a'"):
        _verifier().verify(_token(_claims("a"), KEY_B, kid="b-1"))
    # Same key id as A's, B's key material: the signature check fails.
    with pytest.raises(Unauthenticated, match="Signature verification failed"):
        _verifier().verify(_token(_claims("a"), KEY_B, kid="a-1"))


def test_cluster_b_token_is_accepted_only_as_cluster_b() -> None:
    assert _verifier().verify(_token(_claims("b"), KEY_B, kid="b-1")).cluster == "b"


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        (lambda: _claims(aud=["vault"]), "exactly one audience"),
        (lambda: _claims(aud=["keyferry:a", "keyferry:b"]), "exactly one audience"),
        (lambda: _claims("zeta"), "not registered"),
        (lambda: _claims(iss="https://elsewhere"), "Invalid issuer"),
        (lambda: _claims(exp=_now() - dt.timedelta(minutes=5)), "expired"),
        (lambda: _claims(nbf=_now() + dt.timedelta(minutes=5)), "not yet valid"),
        (lambda: _with_k8s({"namespace": "orders"}), "not bound to a pod"),
        (
            lambda: {k: v for k, v in _claims().items() if k != "kubernetes.io"},
            "no kubernetes.io claims",
        ),
    ],
    ids=[
        "wrong-audience",
        "two-audiences",
        "unknown-cluster",
        "wrong-issuer",
        "expired",
        "not-yet-valid",
        "no-pod",
        "no-k8s-claims",
    ],
)
def test_bad_claims_are_rejected(claims: Callable[[], dict[str, Any]], match: str) -> None:
    with pytest.raises(Unauthenticated, match=match):
        _verifier().verify(_token(claims()))


def _pod(**changes: Any) -> dict[str, Any]:
    k8s: dict[str, Any] = {
        "namespace": "orders",
        "serviceaccount": {"name": "app"},
        "pod": {"name": "app-1", "uid": POD_UID},
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = k8s
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return _with_k8s(k8s)


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        ({"namespace": "Orders"}, "kubernetes.io.namespace"),
        ({"namespace": "a" * 64}, "kubernetes.io.namespace"),
        ({"namespace": "orders.prod"}, "kubernetes.io.namespace"),  # a label has no dots
        ({"namespace": 7}, "kubernetes.io.namespace"),
        ({"serviceaccount": {}}, "kubernetes.io.serviceaccount.name"),
        ({"serviceaccount__name": "app/../x"}, "kubernetes.io.serviceaccount.name"),
        ({"pod__name": "app-1\n"}, "kubernetes.io.pod.name"),
        ({"pod__name": "x" * 254}, "kubernetes.io.pod.name"),
        ({"pod__uid": "pod-uid"}, "kubernetes.io.pod.uid"),
        ({"pod__uid": POD_UID.upper()}, "kubernetes.io.pod.uid"),  # one UID, one spelling
        ({"pod__uid": "{" + POD_UID[:-2] + "}"}, "kubernetes.io.pod.uid"),
        ({"pod__uid": POD_UID.replace("-", "") + "0000"}, "kubernetes.io.pod.uid"),
    ],
)
def test_signed_claims_that_kubernetes_would_not_issue_are_refused_naming_the_claim(
    changes: dict[str, Any], claim: str
) -> None:
    with pytest.raises(InvalidClaim) as refused:
        _verifier().verify(_token(_pod(**changes)))
    assert refused.value.claim == claim
    assert refused.value.reason == "TOKEN_INVALID"


def test_names_kubernetes_allows_are_accepted() -> None:
    claims = _pod(serviceaccount__name="a.b-c", pod__name="web-7f9c.x", namespace="a" * 63)
    workload = _verifier().verify(_token(claims))
    assert (workload.namespace, workload.service_account, workload.pod) == (
        "a" * 63,
        "a.b-c",
        "web-7f9c.x",
    )


def test_unsigned_token_is_rejected() -> None:
    unsigned = jwt.encode(_claims(), "", algorithm="none", headers={"kid": "a-1"})
    with pytest.raises(Unauthenticated, match="algorithm 'none' is not accepted"):
        _verifier().verify(unsigned)


def test_hmac_token_signed_with_the_public_key_is_rejected() -> None:
    forged = jwt.encode(
        _claims(),
        "a-public-key-as-hmac-secret-0123456789",
        algorithm="HS256",
        headers={"kid": "a-1"},
    )
    with pytest.raises(Unauthenticated, match="algorithm 'HS256' is not accepted"):
        _verifier().verify(forged)


def test_resigned_token_with_edited_claims_is_rejected() -> None:
    header, payload, signature = _token(_claims()).split(".")
    other_payload = _token(_with_k8s({"namespace": "kube-system"})).split(".")[1]
    with pytest.raises(Unauthenticated, match="Signature verification failed"):
        _verifier().verify(f"{header}.{other_payload}.{signature}")
    assert payload != other_payload


def test_garbage_is_rejected() -> None:
    with pytest.raises(Unauthenticated, match="not a JWT"):
        _verifier().verify("not-a-token")


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refreshing(clock: Clock, calls: list[int], policy: KeyRefreshPolicy) -> TokenVerifier:
    def refresh() -> dict[str, Any]:
        calls.append(1)
        return {"keys": [JWK_A, JWK_A2]}

    keys = ClusterKeys(
        "a", SHARED_ISSUER, {"keys": [JWK_A]}, refresh=refresh, policy=policy, clock=clock
    )
    return TokenVerifier({"a": keys})


def test_unknown_key_id_refreshes_the_jwks_once() -> None:
    clock, calls = Clock(), list[int]()
    verifier = _refreshing(clock, calls, KeyRefreshPolicy())
    clock.now += 30
    assert verifier.verify(_token(_claims(), KEY_A2, kid="a-2")).pod == "app-1"
    assert verifier.verify(_token(_claims(), KEY_A2, kid="a-2")).pod == "app-1"
    assert calls == [1]


def test_unknown_key_ids_fetch_at_most_once_per_min_interval() -> None:
    clock, calls = Clock(), list[int]()
    verifier = _refreshing(clock, calls, KeyRefreshPolicy(min_interval=dt.timedelta(seconds=30)))
    clock.now += 10  # the JWKS was fetched when the cluster joined, 10 s ago
    for n in range(50):
        with pytest.raises(Unauthenticated, match="not a key of cluster 'a'"):
            verifier.verify(_token(_claims(), KEY_A2, kid=f"random-{n}"))
    assert calls == []
    clock.now += 20
    for n in range(50):
        with pytest.raises(Unauthenticated, match="not a key of cluster 'a'"):
            verifier.verify(_token(_claims(), KEY_A2, kid=f"again-{n}"))
    assert calls == [1]  # the first after the interval fetched; the 49 others did not


def test_a_key_id_a_fetch_showed_unknown_fetches_nothing_for_a_while() -> None:
    clock, calls = Clock(), list[int]()
    policy = KeyRefreshPolicy(
        min_interval=dt.timedelta(seconds=1), unknown_memory=dt.timedelta(minutes=5)
    )
    verifier = _refreshing(clock, calls, policy)
    clock.now += 2
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            verifier.verify(_token(_claims(), KEY_A2, kid="junk"))
        clock.now += 2
    assert calls == [1]
    clock.now += 300
    with pytest.raises(Unauthenticated):
        verifier.verify(_token(_claims(), KEY_A2, kid="junk"))
    assert calls == [1, 1]


def test_the_unknown_key_memory_is_bounded() -> None:
    keys = ClusterKeys(
        "a", SHARED_ISSUER, {"keys": [JWK_A]}, policy=KeyRefreshPolicy(max_unknown=3)
    )
    for n in range(10):
        keys.not_found(f"k{n}")
    assert list(keys._unknown) == ["k7", "k8", "k9"]


def test_a_token_living_longer_than_the_maximum_is_refused() -> None:
    verifier = TokenVerifier(
        {"a": ClusterKeys("a", SHARED_ISSUER, {"keys": [JWK_A]})},
        max_lifetime=dt.timedelta(hours=1),
    )
    now = _now()
    exactly = _claims(iat=now, exp=now + dt.timedelta(hours=1))
    assert verifier.verify(_token(exactly)).pod == "app-1"
    longer = _claims(iat=now, exp=now + dt.timedelta(hours=1, seconds=1))
    with pytest.raises(Unauthenticated, match=r"lives 3601s \(exp - iat\).*tokens.max_lifetime"):
        verifier.verify(_token(longer))


def test_a_token_without_a_key_id_is_refused() -> None:
    token = jwt.encode(_claims(), KEY_A, algorithm="RS256")
    with pytest.raises(Unauthenticated, match="no key id"):
        _verifier().verify(token)


def test_the_audience_error_says_exactly_one_keyferry_audience() -> None:
    two = _claims(aud=["keyferry:a", "keyferry:a"])
    with pytest.raises(Unauthenticated, match="2 audiences starting with 'keyferry:'; exactly one"):
        _verifier().verify(_token(two))
    # Other audiences beside the one keyferry audience are no concern of keyferry's.
    assert _verifier().verify(_token(_claims(aud=["vault", "keyferry:a"]))).cluster == "a"


def test_a_key_id_refused_only_for_a_recent_fetch_may_fetch_after_the_interval() -> None:
    """A cluster that rotated its keys just after a fetch: its new key id is not held
    against it once min_interval has passed."""
    clock, calls = Clock(), list[int]()
    verifier = _refreshing(clock, calls, KeyRefreshPolicy(min_interval=dt.timedelta(seconds=30)))
    with pytest.raises(Unauthenticated):
        verifier.verify(_token(_claims(), KEY_A2, kid="a-2"))
    assert calls == []
    clock.now += 30
    assert verifier.verify(_token(_claims(), KEY_A2, kid="a-2")).pod == "app-1"
    assert calls == [1]
