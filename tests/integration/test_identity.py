"""Workload identity against real clusters: tokens minted by kube-apiserver's TokenRequest,
keys fetched by the broker's cluster client, pods checked on the live API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from broker.clusters import ClusterClient, ClusterConfig, ClusterUnavailable
from broker.errors import Unauthenticated
from broker.identity import ClusterKeys, TokenVerifier
from tests.bed.kube import KubeCluster
from tests.bed.ports import free_port
from tests.scene.kube_helpers import core, eventually, mint_bound_token


def _config(cluster: KubeCluster) -> ClusterConfig:
    return ClusterConfig(
        name=cluster.name,
        kubeconfig=cluster.kubeconfig,
        context=cluster.name,
        issuer=cluster.issuer,
    )


@pytest.fixture
async def clients(kube_clusters: dict[str, KubeCluster]) -> AsyncIterator[dict[str, ClusterClient]]:
    made = {name: ClusterClient(_config(cluster)) for name, cluster in kube_clusters.items()}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture
async def verifier(clients: dict[str, ClusterClient]) -> TokenVerifier:
    keys = {}
    for name, client in clients.items():
        keys[name] = ClusterKeys(name, client.config.issuer, await client.jwks())
    return TokenVerifier(keys)


async def test_broker_fetches_each_clusters_own_keys(
    kube_clusters: dict[str, KubeCluster], clients: dict[str, ClusterClient]
) -> None:
    kids = {}
    for name, client in clients.items():
        jwks = await client.jwks()
        assert jwks == kube_clusters[name].jwks()
        kids[name] = {key["kid"] for key in jwks["keys"]}
        discovery = await client.openid_configuration()
        assert discovery["issuer"] == kube_clusters[name].issuer
    assert kube_clusters["b"].issuer == kube_clusters["c"].issuer  # the bed's shared-issuer pair
    assert kids["b"].isdisjoint(kids["c"])


async def test_a_bound_token_proves_its_pod_until_the_pod_is_deleted(
    kube_clusters: dict[str, KubeCluster],
    clients: dict[str, ClusterClient],
    verifier: TokenVerifier,
) -> None:
    cluster = kube_clusters["b"]
    bound = mint_bound_token(cluster, "identity")
    workload = verifier.verify(bound.token)
    assert (workload.cluster, workload.namespace, workload.service_account) == (
        "b",
        bound.namespace,
        bound.service_account,
    )
    assert (workload.pod, workload.pod_uid) == (bound.pod, bound.pod_uid)
    await clients["b"].ensure_pod_bound(workload)

    with cluster.api_client() as api:
        core(api).delete_namespaced_pod(bound.pod, bound.namespace)
        eventually(lambda: _gone(api, bound.namespace, bound.pod), "pod deleted")
    with pytest.raises(Unauthenticated, match="no longer exists"):
        await clients["b"].ensure_pod_bound(workload)


async def test_the_pod_watch_answers_the_pod_check_until_the_pod_is_deleted(
    kube_clusters: dict[str, KubeCluster],
    clients: dict[str, ClusterClient],
    verifier: TokenVerifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, client = kube_clusters["b"], clients["b"]
    bound = mint_bound_token(cluster, "watched")
    workload = verifier.verify(bound.token)
    watch = client.pod_watch(lambda _: None)
    watch.start()
    try:
        eventually(
            lambda: client.live_pods.vouches(
                bound.namespace, bound.pod, bound.pod_uid, allow_ending=False
            ),
            "the watch has the pod",
        )
        asked: list[str] = []
        ask = client._call

        async def counted(what: str, fn: Any) -> Any:
            asked.append(what)
            return await ask(what, fn)

        monkeypatch.setattr(client, "_call", counted)
        await client.ensure_pod_bound(workload)
        assert asked == []  # answered by the watch's live pods, no API call

        with cluster.api_client() as api:
            core(api).delete_namespaced_pod(bound.pod, bound.namespace)
            eventually(lambda: _gone(api, bound.namespace, bound.pod), "pod deleted")
        with pytest.raises(Unauthenticated, match=r"no longer exists|terminating"):
            await client.ensure_pod_bound(workload)
        assert asked  # the watch no longer vouched: the API server was asked
    finally:
        watch.stop()
    assert not client.live_pods.vouches(  # a stopped watch's pods are not trusted
        "kube-system", "anything", "uid", allow_ending=True
    )


async def test_a_token_of_cluster_b_is_not_accepted_as_cluster_c_with_the_same_issuer(
    kube_clusters: dict[str, KubeCluster], verifier: TokenVerifier
) -> None:
    cluster_b = kube_clusters["b"]
    bound = mint_bound_token(cluster_b, "crossing")
    with cluster_b.api_client() as api:
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=["keyferry:c"],
                expiration_seconds=600,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=bound.pod, uid=bound.pod_uid
                ),
            )
        )
        forged = (
            core(api)
            .create_namespaced_service_account_token(
                bound.service_account, bound.namespace, request
            )
            .status.token
        )
    with pytest.raises(Unauthenticated, match="not a key of cluster 'c'"):
        verifier.verify(forged)


async def test_a_replaced_pod_does_not_accept_the_old_token(
    kube_clusters: dict[str, KubeCluster],
    clients: dict[str, ClusterClient],
    verifier: TokenVerifier,
) -> None:
    cluster = kube_clusters["a"]
    bound = mint_bound_token(cluster, "replaced")
    workload = verifier.verify(bound.token)
    replacement = workload.model_copy(update={"pod_uid": "00000000-0000-0000-0000-000000000000"})
    with pytest.raises(Unauthenticated, match="UID changed"):
        await clients["a"].ensure_pod_bound(replacement)


async def test_an_unreachable_api_server_is_unavailable_not_a_hang(
    kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    source = kube_clusters["a"].kubeconfig.read_text()
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(source.replace(kube_clusters["a"].server, f"https://127.0.0.1:{free_port()}"))
    client = ClusterClient(
        ClusterConfig(name="a", kubeconfig=dead, context="a", issuer=kube_clusters["a"].issuer),
        timeout=3,
    )
    try:
        with pytest.raises(ClusterUnavailable, match=r"unreachable|did not answer"):
            await client.jwks()
    finally:
        client.close()


def _gone(api: object, namespace: str, name: str) -> bool:
    try:
        core(api).read_namespaced_pod(name, namespace)
    except k8s.ApiException as exc:
        return bool(exc.status == 404)
    return False
