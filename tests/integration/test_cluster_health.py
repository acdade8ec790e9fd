"""Each member cluster's health as ListClusters and `keyferry clusters list` report it, on the
bed (issue 22): a real cluster of the config file has its API server, a last contact and a
JWKS age, and its pod watch is watching and delivers the event of a new pod; a registered
cluster whose API server the test stops shows its watch reconnecting with the error, and
watching again once the API server is back. The stopped API server is the test's own (the
scene's rogue API server): the bed's clusters are shared."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.cli.main import app as cli
from broker.clock import utcnow
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker
from tests.scene.polling import until
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
OWN = "outage"  # the registered cluster whose API server the test stops
WATCHING, RECONNECTING = clusters_pb2.WATCH_STATE_WATCHING, clusters_pb2.WATCH_STATE_RECONNECTING


async def listed(broker: Broker) -> dict[str, clusters_pb2.Cluster]:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        reply = await stub.ListClusters(clusters_pb2.ListClustersRequest())
    return {c.name: c for c in reply.clusters}


def jwks() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="outage-1", use="sig", alg="RS256")
    return json.dumps({"keys": [jwk]}).encode()


async def test_clusters_report_contact_keys_and_a_pod_watch_that_reconnects_after_an_outage(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    # A real cluster of the config file: its API server, contact and keys, a live watch
    # that delivers the event of a pod created now.
    before = utcnow()
    await asyncio.to_thread(mint, kube_clusters["a"])

    async def new_pod_seen() -> clusters_pb2.Cluster | None:
        a = (await listed(broker))["a"]
        event = a.pod_watch.last_event.ToDatetime(tzinfo=before.tzinfo)
        return a if a.pod_watch.HasField("last_event") and event >= before else None

    a = await until(new_pod_seen, "cluster a's pod watch delivered the new pod's event")
    assert a.source == clusters_pb2.CLUSTER_SOURCE_CONFIG
    assert a.server.startswith("https://")
    assert a.pod_watch.state == WATCHING
    assert a.pod_watch.last_error == ""
    assert a.last_contact.ToDatetime() >= a.pod_watch.last_event.ToDatetime()
    assert a.HasField("jwks_fetched_at")
    assert a.key_ids

    with RogueApiServer(tmp_path, jwks()) as api:
        async with broker.admin_channel(PLATFORM) as channel:
            stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
            registered = await stub.RegisterCluster(
                clusters_pb2.RegisterClusterRequest(
                    name=OWN,
                    server=api.server,
                    ca_pem=api.ca_pem,
                    credential=clusters_pb2.ClusterCredential(bearer_token="any"),
                    issuer=ROGUE_ISSUER,
                )
            )
        assert registered.cluster.server == api.server

        async def state(wanted: int) -> clusters_pb2.Cluster | None:
            own = (await listed(broker))[OWN]
            return own if own.pod_watch.state == wanted else None

        up = await until(lambda: state(WATCHING), "the new cluster's pod watch is watching")
        assert up.source == clusters_pb2.CLUSTER_SOURCE_REGISTERED
        assert up.HasField("last_contact")
        assert up.HasField("jwks_fetched_at")

        api.stop()
        down = await until(lambda: state(RECONNECTING), "the watch of a stopped API server")
        assert "refused" in down.pod_watch.last_error.lower(), down.pod_watch.last_error
        assert down.pod_watch.since.ToDatetime() >= up.pod_watch.since.ToDatetime()

        context = broker.context_file(tmp_path, PLATFORM)
        runner = CliRunner()
        table = await asyncio.to_thread(
            runner.invoke, cli, ["clusters", "list", "--context", str(context)]
        )
        assert table.exit_code == 0, table.output
        lines = table.output.splitlines()
        header = ["NAME", "SOURCE", "CONTACT", "JWKS", "LEASES", "ISSUER", "WATCH", "EVENT"]
        assert lines[0].split()[:8] == header
        row = next(line.split() for line in lines if line.startswith(OWN))
        assert row[:2] == [OWN, "registered"]
        assert row[6:9] == ["reconnecting", "-", api.server]  # no event from this server
        shown = await asyncio.to_thread(
            runner.invoke, cli, ["clusters", "get", OWN, "--context", str(context), "-o", "json"]
        )
        record = json.loads(shown.output[shown.output.rindex("{\n") :])
        assert (record["watch"], record["watch_error"]) == (
            "reconnecting",
            down.pod_watch.last_error,
        )

        api.restart()
        back = await until(lambda: state(WATCHING), "the watch back after the restart")
        assert back.pod_watch.last_error == ""
        assert back.last_contact.ToDatetime() > down.last_contact.ToDatetime()
