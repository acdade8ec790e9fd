"""The sealing key rotates (issue 18): a ring whose first key seals and signs and whose
every key opens and verifies, and `keyferry admin reseal`, which moves every row to the
current key so the old one can leave the ring (docs/operations.md, "Rotate the sealing key").

One broker under K1 issues a lease and registers a cluster; restarted on the ring [K2, K1]
everything opens and verifies; on [K2] alone, before the re-seal, it refuses to start and
says which rows and what to do; after the re-seal, on [K2] alone, Issue replays the same
credential, the cluster is joined and Watch's snapshot carries the credential.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.cli.main import app
from broker.service.common.sealing import SealingKeysMissing
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, issue, start_broker
from tests.scene.leases import Agent
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer
from tests.scene.workloads import broker_stub, mint

from .attack_scene import Exposure

pytestmark = pytest.mark.bed


def with_ring(broker: Broker, folder: Path, name: str, keys: list[str]) -> dict[str, Any]:
    """The first broker's config on the same store, with sealing.keys `keys`."""
    data: dict[str, Any] = yaml.safe_load((folder / "broker.yaml").read_text())
    data["data_dir"] = str(folder / name / "data")
    data["audit"] = {**data["audit"], "log": str(folder / name / "audit.jsonl")}
    data["sealing"] = {"keys": keys}
    (folder / name).mkdir()
    return data


def reseal(folder: Path, data: dict[str, Any], *options: str) -> Any:
    path = folder / "reseal.yaml"
    path.write_text(yaml.safe_dump(data))
    return CliRunner().invoke(app, ["admin", "reseal", "--config", str(path), *options])


async def register_member(broker: Broker, member: RogueApiServer) -> None:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        await stub.RegisterCluster(
            clusters_pb2.RegisterClusterRequest(
                name="member",
                server=member.server,
                ca_pem=member.ca_pem,
                credential=clusters_pb2.ClusterCredential(bearer_token="member-token"),
                issuer=ROGUE_ISSUER,
            )
        )


async def test_the_sealing_key_rotates_through_a_ring_and_a_reseal(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path, exposure: Exposure
) -> None:
    k1 = broker.settings.sealing.key
    assert k1 is not None
    old, new = k1.get_secret_value(), base64.b64encode(os.urandom(32)).decode()
    exposure.handed_out(new)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="member-1", use="sig", alg="RS256")
    pod = mint(kube_clusters["a"])
    with RogueApiServer(tmp_path, json.dumps({"keys": [jwk]}).encode()) as member:
        first = await issue(broker, pod)
        exposure.handed_out(*first.credential.values.values())
        await register_member(broker, member)
        # The first broker keeps running on [K1], idle, as a replica would during the
        # re-seal; the brokers below share its store.

        # [K2, K1]: K1's rows open and verify; new ones are made under K2.
        ring = with_ring(broker, tmp_path, "rotating", [new, old])
        rotating = await start_broker(ring, tmp_path / "rotating")
        try:
            assert rotating.server.runtime.clusters.is_joined("member")
            again = await issue(rotating, pod)
            assert again.lease.id == first.lease.id
            assert again.credential.values == first.credential.values
        finally:
            await rotating.server.stop(1)

        # [K2] alone before the re-seal: refused at start, naming rows and the fix.
        with pytest.raises(SealingKeysMissing) as refused:
            await start_broker(with_ring(broker, tmp_path, "early", [new]), tmp_path / "early")
        message = str(refused.value)
        exposure.said("start refusal", message)
        assert "in leases" in message
        assert "in clusters" in message
        assert "keyferry admin reseal" in message
        assert "sealing.keys" in message

        ring = with_ring(broker, tmp_path, "reseal", [new, old])  # as an operator's host
        checked = reseal(tmp_path, ring, "--check")
        assert checked.exit_code == 1, checked.output
        done = reseal(tmp_path, ring, "--json")
        exposure.said("reseal", checked.output + done.output)
        assert done.exit_code == 0, done.output
        tables = {t["table"]: t for t in json.loads(done.stdout.splitlines()[-1])["tables"]}
        assert tables["leases"]["resealed"] >= 1
        assert tables["clusters"]["resealed"] == 1
        assert all(t["refused"] == 0 for t in tables.values())
        assert reseal(tmp_path, ring, "--check").exit_code == 0

        # [K2] alone after it: everything opens, Issue and Watch work.
        final = await start_broker(with_ring(broker, tmp_path, "final", [new]), tmp_path / "final")
        try:
            assert final.server.runtime.clusters.is_joined("member")
            replay = await issue(final, pod)
            assert replay.lease.id == first.lease.id
            assert replay.credential.values == first.credential.values
            fresh = await issue(final, mint(kube_clusters["a"]))
            assert fresh.lease.id != first.lease.id
            async with broker_stub(final.port, final.ca) as stub:
                agent = Agent(stub, pod)
                snapshot = await agent.next()
                agent.close()
            assert snapshot.rotated.lease.id == first.lease.id
            assert snapshot.rotated.credential.values == first.credential.values
        finally:
            await final.server.stop(1)
