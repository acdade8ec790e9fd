"""Verify projected service-account tokens against the keys of the cluster they name.

The cluster is chosen by the token's audience, `keyferry:<cluster name>` (the webhook asks
for it), never by the issuer: real fleets share issuer strings (kubeadm, kind, k3s and
rke2 all default to https://kubernetes.default.svc.cluster.local). The token must then
carry that cluster's issuer and be signed by a key from that cluster's JWKS, so two
clusters with one issuer still never authenticate as each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from broker.errors import TemporaryError, Unauthenticated
from broker.policy import Workload

AUDIENCE_PREFIX = "keyferry:"
DEFAULT_LEEWAY = dt.timedelta(seconds=30)
ALGORITHMS = ("RS256", "ES256")  # what kube-apiserver signs service-account tokens with


def audience_for(cluster: str) -> str:
    return f"{AUDIENCE_PREFIX}{cluster}"


def signing_keys(jwks: Mapping[str, Any]) -> list[jwt.PyJWK]:
    """The usable keys of a JWKS a cluster served; jwt.PyJWKSetError when it has none.

    PyJWT lets KeyError, TypeError and ValueError out of some malformed keys (an `oct` key
    without `k`, a key that is not an object): a JWKS is untrusted input, so every way it
    can be malformed leaves as the one error.
    """
    try:
        return list(jwt.PyJWKSet.from_dict(dict(jwks)).keys)
    except jwt.PyJWTError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise jwt.PyJWKSetError(f"a key of the JWK Set is malformed ({exc!r})") from exc


@dataclass
class ClusterKeys:
    """A registered cluster's issuer and its pinned JWKS; `refresh` fetches the JWKS anew."""

    name: str
    issuer: str
    jwks: Mapping[str, Any]
    refresh: Callable[[], Mapping[str, Any]] | None = None
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._load(self.jwks)

    def _load(self, jwks: Mapping[str, Any]) -> None:
        keys = signing_keys(jwks)
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self.jwks = jwks

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with this id; on an unknown id, refresh the JWKS once (keys rotate).
        A refreshed JWKS without usable keys leaves the pinned keys in place."""
        if kid not in self._keys and self.refresh is not None:
            fresh = self.refresh()
            try:
                self._load(fresh)
            except jwt.PyJWTError as exc:
                raise TemporaryError(
                    f"cluster {self.name!r} served a JWKS without usable keys ({exc}); "
                    "its pinned keys are kept"
                ) from exc
        return self._keys.get(kid)


class TokenVerifier:
    def __init__(
        self, clusters: Mapping[str, ClusterKeys], leeway: dt.timedelta = DEFAULT_LEEWAY
    ) -> None:
        self._clusters = clusters
        self._leeway = leeway

    def verify(self, token: str) -> Workload:
        """Return the pod a token proves, or raise Unauthenticated saying why."""
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Workload, dt.datetime]:
        """The pod a token proves and when the token expires (its `exp`, in UTC): a
        Watch stream must end then."""
        cluster = self._cluster_of(token)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted; expected one of "
                f"{', '.join(ALGORITHMS)} (a service-account token)"
            )
        key = cluster.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthenticated(f"token key id {kid!r} is not a key of cluster {cluster.name!r}")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=audience_for(cluster.name),
                issuer=cluster.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"token rejected for cluster {cluster.name!r}: {exc}") from exc
        expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        return _workload(cluster.name, claims), expires_at

    def _cluster_of(self, token: str) -> ClusterKeys:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT: {exc}") from exc
        claimed = unverified.get("aud")
        # `aud` is a string or a list of strings (RFC 7519); anything else names no cluster.
        audiences = [claimed] if isinstance(claimed, str) else claimed
        audiences = audiences if isinstance(audiences, list) else []
        names = [
            a.removeprefix(AUDIENCE_PREFIX)
            for a in audiences
            if isinstance(a, str) and a.startswith(AUDIENCE_PREFIX)
        ]
        if len(names) != 1:
            raise Unauthenticated(
                "the token must have exactly one audience 'keyferry:<cluster name>'; "
                "request a projected service-account token with that audience"
            )
        cluster = self._clusters.get(names[0])
        if cluster is None:
            raise Unauthenticated(
                f"cluster {names[0]!r} named by the token's audience is not registered",
                reason="CLUSTER_UNKNOWN",
            )
        return cluster


def _workload(cluster: str, claims: Mapping[str, Any]) -> Workload:
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
    account = k8s.get("serviceaccount") or {}
    return Workload(
        cluster=cluster,
        namespace=str(k8s.get("namespace", "")),
        service_account=str(account.get("name", "")),
        pod=str(pod["name"]),
        pod_uid=str(pod["uid"]),
    )
