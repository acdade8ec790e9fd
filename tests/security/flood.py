"""A flood of junk workload tokens against a broker's Issue, from a process of its own.

`python -m tests.security.flood PORT CA_FILE CLUSTER SECONDS [CONCURRENCY]` sends, for
SECONDS, Issue calls whose bearer token anyone could make: `aud: keyferry:CLUSTER`, a
random key id, a random "signature". It prints one JSON object: how many calls were made
and the status codes they got. Run apart from the broker so the flood's own CPU is not
charged to the broker's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from broker.api.v1 import broker_pb2, broker_pb2_grpc

CHANNELS = 4


def junk_token(cluster: str) -> str:
    """What an attacker with no key sends: right audience, random key id, random bytes."""
    now = int(time.time())

    def part(value: object) -> str:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = {"alg": "RS256", "kid": secrets.token_hex(16), "typ": "JWT"}
    claims = {
        "aud": [f"keyferry:{cluster}"],
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:orders:app",
        "iat": now,
        "exp": now + 600,
        "kubernetes.io": {
            "namespace": "orders",
            "serviceaccount": {"name": "app"},
            "pod": {"name": "app-1", "uid": secrets.token_hex(8)},
        },
    }
    signature = base64.urlsafe_b64encode(os.urandom(256)).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}.{signature}"


async def flood(
    port: int, ca: Path, cluster: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    codes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    request = broker_pb2.IssueRequest(credential_name="orders-db", role="orders-db-ro")

    async def worker(stub: Any) -> None:
        while time.monotonic() < deadline:
            metadata = (("authorization", f"Bearer {junk_token(cluster)}"),)
            try:
                await stub.Issue(request, metadata=metadata, timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1

    channels = [grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) for _ in range(CHANNELS)]
    try:
        stubs = [broker_pb2_grpc.BrokerServiceStub(channel) for channel in channels]
        started = time.monotonic()
        await asyncio.gather(*(worker(stubs[n % CHANNELS]) for n in range(concurrency)))
        took = time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close()
    return {"calls": sum(codes.values()), "seconds": round(took, 2), "codes": dict(codes)}


def main(argv: list[str]) -> None:
    port, ca, cluster, seconds = int(argv[0]), Path(argv[1]), argv[2], float(argv[3])
    concurrency = int(argv[4]) if len(argv) > 4 else 32
    print(json.dumps(asyncio.run(flood(port, ca, cluster, seconds, concurrency))))


if __name__ == "__main__":
    main(sys.argv[1:])
