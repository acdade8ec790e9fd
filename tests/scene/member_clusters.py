"""Member clusters as the broker sees them: the RBAC of docs/examples/broker-rbac.yaml applied
as-is, and a kubeconfig whose user is a token of the broker's ServiceAccount (no admin
certificate), and the RegisterCluster request naming such a cluster. Shared by the registry
tests, the admin attacks and the demo."""

from __future__ import annotations

import json
from pathlib import Path

from broker.api.v1 import clusters_pb2
from tests.bed.kube import KubeCluster

RBAC = Path(__file__).parents[2] / "docs" / "examples" / "broker-rbac.yaml"
NAMESPACE, ACCOUNT = "keyferry-system", "keyferry-broker"


def broker_kubeconfig(cluster: KubeCluster, folder: Path, account: str = ACCOUNT) -> Path:
    """A kubeconfig for `cluster` whose user is a token of `account` (the RBAC applied as-is;
    no admin certificate)."""
    cluster.kubectl("apply", "-f", str(RBAC))
    if account != ACCOUNT:
        manifest = cluster.kubectl(
            "-n", NAMESPACE, "create", "serviceaccount", account, "--dry-run=client", "-o=yaml"
        )
        cluster.kubectl("apply", "-f", "-", stdin=manifest)
    token = cluster.kubectl("-n", NAMESPACE, "create", "token", account, "--duration=1h").strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path = folder / f"{cluster.name}-{account}.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": cluster.name, "cluster": server}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": cluster.name, "context": {"cluster": cluster.name, "user": account}}
                ],
                "current-context": cluster.name,
            }
        )
    )
    return path


def register_request(
    cluster: KubeCluster, kubeconfig: Path, name: str | None = None, token: str | None = None
) -> clusters_pb2.RegisterClusterRequest:
    data = json.loads(kubeconfig.read_text())
    server = data["clusters"][0]["cluster"]
    return clusters_pb2.RegisterClusterRequest(
        name=name or cluster.name,
        server=server["server"],
        ca_pem=Path(server["certificate-authority"]).read_text(),
        credential=clusters_pb2.ClusterCredential(
            bearer_token=token or data["users"][0]["user"]["token"]
        ),
        issuer=cluster.issuer,
    )
