"""Cluster a's real node as the end-to-end tests use it: a broker (a thread of the test
process) listening on the node's bridge address, the keyferry webhook the API server calls,
the images the bed built loaded into the node, and the namespace opted in. The fixtures
`images` and `scene` are registered for tests/e2e by its conftest.py."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.bed.kube import KubeCluster
from tests.bed.moto import REGION, MotoServer
from tests.bed.node import Node
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.conftest import need

from .broker import MOUNT
from .broker_thread import (
    BrokerThread,
    Webhook,
    mount_internal_tls,
    mount_kv,
    mount_s3_reader,
    scene_broker,
    webhooks,
)
from .kube_helpers import core, eventually
from .nodepods import SECRETS, NodeImages, NodePod, create, load_images, pod_body, prepare_namespace
from .pods import AGENT

POLICIES = Path(__file__).parents[1] / "e2e" / "policies.cedar"

RUN = secrets.token_hex(3)
OPT_IN = (f"keyferry.test/node-e2e-{RUN}", "on")
NAMESPACE = "orders"  # docs/examples/policies.cedar and policies.cedar here permit it


@dataclass
class NodeScene:
    node: Node
    cluster: KubeCluster
    images: NodeImages
    broker: BrokerThread
    webhook: Webhook
    ca_pem: str
    """The CA of role internal-tls's PKI mount."""
    moto: MotoServer

    def aws_env(self) -> dict[str, str]:
        """The app's own AWS settings: the credentials come from the agent's file."""
        return {
            "AWS_SHARED_CREDENTIALS_FILE": f"{SECRETS}/s3",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.moto.endpoint,
            "HOME": "/tmp",  # noqa: S108 - the aws CLI's cache, inside the container
        }

    def start(self, body: dict[str, Any]) -> NodePod:
        pod = create(self.cluster, NAMESPACE, body)
        pod.wait_ready()
        return pod


@pytest.fixture(scope="module")
def images(node: Node) -> NodeImages:
    return need(lambda: load_images(node))


@pytest.fixture(scope="module")
def scene(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    postgres: PostgresServer,
    moto: MotoServer,
    kube_clusters: dict[str, KubeCluster],
    node: Node,
    images: NodeImages,
) -> Iterator[NodeScene]:
    root = vault.client()
    mount_kv(root)
    mount_s3_reader(root, moto)
    ca_pem = mount_internal_tls(root)
    folder = tmp_path_factory.mktemp("node-e2e")
    policies = (POLICIES,)
    broker = scene_broker(
        folder,
        vault,
        postgres,
        kube_clusters,
        policies=policies,
        workload_host=node.address,
        db_host=node.address,
    )
    cluster = node.cluster
    prepare_namespace(cluster, NAMESPACE, OPT_IN)
    try:
        with webhooks([cluster], folder / "webhook", broker.broker, RUN, OPT_IN, images.agent) as (
            hooks
        ):
            eventually(lambda: mutates(cluster, images), "the webhook patching pods on a")
            yield NodeScene(node, cluster, images, broker, hooks["a"], ca_pem, moto)
    finally:
        broker.stop()
        root.sys.disable_secrets_engine(MOUNT)


def mutates(cluster: KubeCluster, images: NodeImages) -> bool:
    """A server-side dry run comes back injected once the registration is in effect."""
    body = pod_body("probe", images.app, {"db": "orders-db-ro"})
    with cluster.api_client() as api:
        raw = core(api).create_namespaced_pod(
            NAMESPACE, body, dry_run="All", _preload_content=False
        )
    spec = json.loads(raw.data)["spec"]
    return any(c["name"] == AGENT for c in spec.get("initContainers") or [])


def refused(dsn: str) -> bool:
    """Whether PostgreSQL refuses a login with this DSN."""
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.OperationalError:
        return True
    return False
