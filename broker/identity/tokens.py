"""Verify projected service-account tokens against the keys of the cluster they name.

The cluster is chosen by the token's audience, `keyferry:<cluster name>` (the webhook asks
for it), never by the issuer: real fleets share issuer strings (kubeadm, kind, k3s and
rke2 all default to https://kubernetes.default.svc.cluster.local). The token must then
carry that cluster's issuer and be signed by a key from that cluster's JWKS, so two
clusters with one issuer still never authenticate as each other.

A token is read in two steps: `claim` (no signature yet: which cluster, which key id; cheap)
and `check` (the signature and the claims: CPU work). Between them the caller finds the
key. A key id the cluster's JWKS does not hold may mean the cluster rotated its keys, so
the JWKS is fetched anew, but only as `KeyRefreshPolicy` allows: at most once per
`min_interval` per cluster, and never for a key id a fetch already showed to be unknown
(remembered for `unknown_memory`). Anyone can make a token with a random key id; this is
what keeps such tokens from turning into calls to the member cluster's API server.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from broker.errors import TemporaryError, Unauthenticated
from broker.policy import Workload

from .claims import workload_of

AUDIENCE_PREFIX = "keyferry:"
DEFAULT_LEEWAY = dt.timedelta(seconds=30)
# The webhook asks for tokens of at most an hour (token_expiration_seconds).
DEFAULT_MAX_LIFETIME = dt.timedelta(hours=1)
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


@dataclass(frozen=True)
class KeyRefreshPolicy:
    """When a token's unknown key id may make the broker fetch its cluster's JWKS anew."""

    min_interval: dt.timedelta = dt.timedelta(seconds=30)
    unknown_memory: dt.timedelta = dt.timedelta(minutes=5)
    max_unknown: int = 4096  # remembered unknown key ids per cluster; the oldest go first


@dataclass
class ClusterKeys:
    """A registered cluster's issuer and its pinned JWKS; `refresh` fetches the JWKS anew
    (for `key`, the synchronous path; the broker's async path fetches by itself and calls
    `loaded`). Safe to use from several threads."""

    name: str
    issuer: str
    jwks: Mapping[str, Any]
    refresh: Callable[[], Mapping[str, Any]] | None = None
    policy: KeyRefreshPolicy = field(default_factory=KeyRefreshPolicy)
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, init=False, repr=False)
    _fetched_at: float = field(default=0.0, init=False, repr=False)
    _unknown: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False, repr=False)
    _state: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _fetching: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._load(self.jwks)
        self._fetched_at = self.clock()

    def _load(self, jwks: Mapping[str, Any]) -> None:
        keys = signing_keys(jwks)
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self.jwks = jwks

    def known(self, kid: str) -> jwt.PyJWK | None:
        """The key with this id in the JWKS held now (no fetch)."""
        return self._keys.get(kid)

    def fetch_allowed(self, kid: str) -> bool:
        """Whether this unknown key id may fetch the JWKS now: not shown unknown by a recent
        fetch, and the last fetch at least `min_interval` ago."""
        now = self.clock()
        with self._state:
            seen = self._unknown.get(kid)
            if seen is not None and now - seen < self.policy.unknown_memory.total_seconds():
                return False
            return now - self._fetched_at >= self.policy.min_interval.total_seconds()

    def fetching(self) -> None:
        """A fetch starts now: the next one waits `min_interval`, whether this one works."""
        with self._state:
            self._fetched_at = self.clock()

    def loaded(self, jwks: Mapping[str, Any]) -> None:
        """Hold the JWKS a fetch returned; one without usable keys leaves the pinned keys in
        place (TemporaryError)."""
        try:
            self._load(jwks)
        except jwt.PyJWTError as exc:
            raise TemporaryError(
                f"cluster {self.name!r} served a JWKS without usable keys ({exc}); "
                "its pinned keys are kept"
            ) from exc

    def not_found(self, kid: str) -> None:
        """Remember that a JWKS fetched since this key id was seen lacks it (no fetch for it
        for a while). A key id refused only because a fetch was too recent is not
        remembered: after `min_interval` it may fetch (a cluster that just rotated)."""
        with self._state:
            self._unknown[kid] = self.clock()
            self._unknown.move_to_end(kid)
            while len(self._unknown) > self.policy.max_unknown:
                self._unknown.popitem(last=False)

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The key with this id; on an unknown id, fetch the JWKS once more if the policy
        allows (one fetch at a time), since keys rotate."""
        key = self.known(kid)
        if key is None and self.refresh is not None and self.fetch_allowed(kid):
            with self._fetching:
                if self.fetch_allowed(kid):  # not fetched meanwhile by another thread
                    self.fetching()
                    self.loaded(self.refresh())
            key = self.known(kid)
            if key is None:
                self.not_found(kid)
        return key


@dataclass(frozen=True)
class Claimed:
    """What a token says about itself before its signature is checked: which cluster's key
    should have signed it."""

    cluster: ClusterKeys
    kid: str


class TokenVerifier:
    def __init__(
        self,
        clusters: Mapping[str, ClusterKeys],
        leeway: dt.timedelta = DEFAULT_LEEWAY,
        max_lifetime: dt.timedelta = DEFAULT_MAX_LIFETIME,
    ) -> None:
        self._clusters = clusters
        self._leeway = leeway
        self._max_lifetime = max_lifetime

    def verify(self, token: str) -> Workload:
        """Return the pod a token proves, or raise Unauthenticated saying why."""
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Workload, dt.datetime]:
        """The pod a token proves and when the token expires (its `exp`, in UTC): a
        Watch stream must end then."""
        claimed = self.claim(token)
        key = claimed.cluster.key(claimed.kid)
        if key is None:
            raise unknown_key(claimed)
        return self.check(token, claimed, key)

    def claim(self, token: str) -> Claimed:
        """The cluster the token names and its key id; Unauthenticated when it names none
        or asks for an algorithm keyferry does not accept. The signature is not checked."""
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
        if not isinstance(kid, str):
            raise Unauthenticated(
                "the token's header has no key id (kid); use a service-account token"
            )
        return Claimed(cluster, kid)

    def check(self, token: str, claimed: Claimed, key: jwt.PyJWK) -> tuple[Workload, dt.datetime]:
        """Check the token's signature with `key` and its claims; the pod it proves and
        when it expires."""
        cluster = claimed.cluster
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
        self._check_lifetime(claims)
        expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        return workload_of(cluster.name, claims), expires_at

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        lifetime = int(claims["exp"]) - int(claims["iat"])
        most = int(self._max_lifetime.total_seconds())
        if lifetime > most:
            raise Unauthenticated(
                f"the token lives {lifetime}s (exp - iat), longer than the broker accepts "
                f"({most}s, setting tokens.max_lifetime); request a projected token with "
                "a shorter expirationSeconds (the webhook's token_expiration_seconds)"
            )

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
                f"the token has {len(names)} audiences starting with 'keyferry:'; exactly one "
                "audience 'keyferry:<cluster name>' is required: request a projected "
                "service-account token with that one audience"
            )
        cluster = self._clusters.get(names[0])
        if cluster is None:
            raise Unauthenticated(
                f"cluster {names[0]!r} named by the token's audience is not registered",
                reason="CLUSTER_UNKNOWN",
            )
        return cluster


def unknown_key(claimed: Claimed) -> Unauthenticated:
    """The refusal of a token whose key id its cluster's JWKS does not hold."""
    return Unauthenticated(
        f"token key id {claimed.kid[:64]!r} is not a key of cluster {claimed.cluster.name!r}"
    )
