"""Callers' defences against junk tokens, with a cluster client that only serves a JWKS:
one JWKS fetch at a time per cluster, no fetch per junk key id, a full lane refused at once.
tests/security/test_token_flood.py runs the same against real clusters."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from types import SimpleNamespace
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.clusters import ClusterClient
from broker.errors import LimitExceeded, Unauthenticated
from broker.identity import KeyRefreshPolicy
from broker.service.common.callers import Callers, VerifyLimits

POD_UID = "6f1c0b53-2f0e-4b8e-9a52-3f3d2a1c9e07"

ISSUER = "https://kubernetes.default.svc.cluster.local"


def _keypair(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return private, jwk


KEY, JWK = _keypair("a-1")


class JwksOnly:
    """Serves a JWKS after `delay` seconds and counts the requests."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.config = SimpleNamespace(name=name, issuer=ISSUER)
        self.delay = delay
        self.fetches = 0

    async def jwks(self) -> dict[str, Any]:
        self.fetches += 1
        await asyncio.sleep(self.delay)
        return {"keys": [JWK]}

    def close(self) -> None:
        pass


def _token(cluster: str, kid: str) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "iss": ISSUER,
        "aud": [f"keyferry:{cluster}"],
        "sub": "system:serviceaccount:orders:app",
        "iat": now,
        "exp": now + dt.timedelta(minutes=10),
        "kubernetes.io": {
            "namespace": "orders",
            "serviceaccount": {"name": "app"},
            "pod": {"name": "app-1", "uid": POD_UID},
        },
    }
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": kid})


async def _callers(limits: VerifyLimits, *clients: JwksOnly) -> Callers:
    return await Callers.connect({c.config.name: cast(ClusterClient, c) for c in clients}, limits)


async def test_concurrent_unknown_key_ids_share_one_fetch() -> None:
    client = JwksOnly("a", delay=0.2)
    policy = KeyRefreshPolicy(min_interval=dt.timedelta(seconds=1))
    callers = await _callers(VerifyLimits(refresh=policy), client)
    try:
        await asyncio.sleep(1.05)  # the join's fetch is more than min_interval ago
        outcomes = await asyncio.gather(
            *(callers.verify(_token("a", f"junk-{n}")) for n in range(200)),
            return_exceptions=True,
        )
        assert all(isinstance(o, Unauthenticated) for o in outcomes)
        assert client.fetches == 2  # the join, then one for the whole burst
        assert callers.jwks_fetches == {"a": 1}
        workload, _ = await callers.verify(_token("a", "a-1"))  # the real key still works
        assert workload.pod == "app-1"
    finally:
        callers.close()


async def test_a_full_lane_is_refused_at_once_and_other_clusters_go_on() -> None:
    limits = VerifyLimits(threads=1, queue=2)
    callers = await _callers(limits, JwksOnly("a"), JwksOnly("b"))
    release = threading.Event()
    try:
        lane = callers.lane("a")
        held = [asyncio.ensure_future(lane.run(release.wait)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(LimitExceeded, match=r"cluster 'a' has 3 token checks"):
            await callers.verify(_token("a", "a-1"))
        workload, _ = await callers.verify(_token("b", "a-1"))
        assert workload.cluster == "b"
        release.set()
        await asyncio.gather(*held)
        assert (await callers.verify(_token("a", "a-1")))[0].cluster == "a"
    finally:
        release.set()
        callers.close()
