"""RBAC profiles kept in sync across the bed's clusters a, b and c (real API servers): labels
select clusters, a dry run changes nothing, the leader's pass (every second here) creates
the bindings, restores one deleted or edited by hand, leaves one it did not make alone,
and removes its own when the profile goes."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client as k8s
from typer.testing import CliRunner

from broker.api.v1 import rbac_pb2, rbac_pb2_grpc
from broker.cli.main import app as cli
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, start_broker
from tests.scene.polling import until

pytestmark = pytest.mark.bed
SYNC_WITHIN = 15.0  # seconds: the pass runs every second here (access.rbac_sync_interval)


@pytest.fixture
async def broker(tmp_path: Path, broker_config: dict[str, Any]) -> AsyncIterator[Broker]:
    broker_config["access"] = {"rbac_sync_interval": "1s"}
    running = await start_broker(broker_config, tmp_path)
    yield running
    await running.server.stop(1)


async def rbac_call(broker: Broker, method: str, request: Any) -> Any:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = rbac_pb2_grpc.RbacServiceStub(channel)
        return await getattr(stub, method)(request, timeout=60)


async def apply(broker: Broker, profiles: list[dict[str, Any]], dry_run: bool = False) -> Any:
    text = yaml.safe_dump({"profiles": profiles})
    request = rbac_pb2.ApplyProfilesRequest(profiles_yaml=text, dry_run=dry_run)
    return (await rbac_call(broker, "ApplyProfiles", request)).changes


def binding(cluster: KubeCluster, name: str) -> Any:
    with cluster.api_client() as api:
        rbac: Any = k8s.RbacAuthorizationV1Api(api)
        try:
            return rbac.read_cluster_role_binding(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise


async def read(cluster: KubeCluster, name: str) -> Any:
    return await asyncio.to_thread(binding, cluster, name)


def admin_rbac(cluster: KubeCluster) -> Any:
    return k8s.RbacAuthorizationV1Api(cluster.api_client())


async def test_profiles_follow_labels_and_the_leader_keeps_clusters_so(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    a, b, c = (kube_clusters[n] for n in "abc")
    run = secrets.token_hex(3)
    env = f"prod-{run}"
    for name in ("a", "b"):
        request = rbac_pb2.LabelClusterRequest(cluster=name, labels={"env": env})
        assert dict((await rbac_call(broker, "LabelCluster", request)).labels) == {"env": env}
    listed = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        [
            "clusters",
            "list",
            "-o",
            "json",
            "--context",
            str(broker.context_file(tmp_path, PLATFORM)),
        ],
    )
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout[listed.stdout.index("[") :])
    assert {r["name"]: r["labels"] for r in rows} == {
        "a": f"env={env}",
        "b": f"env={env}",
        "c": None,
    }
    oncall = {
        "name": f"oncall-{run}",
        "group": "oncall",
        "cluster_role": "view",
        "clusters": {"env": env},
    }
    everywhere = {"name": f"auditors-{run}", "group": "auditors", "cluster_role": "view"}
    oncall_name = f"keyferry-profile-oncall-{run}"
    everywhere_name = f"keyferry-profile-auditors-{run}"

    # A binding of the second profile's name that keyferry did not make, in c.
    group = "rbac.authorization.k8s.io"
    theirs = k8s.V1ClusterRoleBinding(
        metadata=k8s.V1ObjectMeta(name=everywhere_name),
        role_ref=k8s.V1RoleRef(api_group=group, kind="ClusterRole", name="view"),
        subjects=[k8s.RbacV1Subject(kind="Group", name="someone-else", api_group=group)],
    )
    made: Any = await asyncio.to_thread(admin_rbac(c).create_cluster_role_binding, theirs)
    their_uid = made.metadata.uid

    planned = await apply(broker, [oncall, everywhere], dry_run=True)
    assert {(ch.cluster, ch.action, ch.binding) for ch in planned} == {
        ("a", "create", oncall_name),
        ("b", "create", oncall_name),
        ("a", "create", everywhere_name),
        ("b", "create", everywhere_name),
        ("c", "conflict", everywhere_name),
    }
    assert await read(a, oncall_name) is None  # a dry run changes nothing

    applied = await apply(broker, [oncall, everywhere])
    assert {(ch.cluster, ch.action) for ch in applied if ch.binding == oncall_name} == {
        ("a", "create"),
        ("b", "create"),
    }
    made_a, made_b = await read(a, oncall_name), await read(b, oncall_name)
    assert [s.name for s in made_a.subjects] == ["oncall"]
    assert made_a.role_ref.name == "view"
    assert made_b is not None
    assert await read(c, oncall_name) is None  # c's labels do not match

    # Deleted by hand in a: restored (a new object); edited in b: put back as the profile says.
    await asyncio.to_thread(admin_rbac(a).delete_cluster_role_binding, oncall_name)
    edited = [
        {"kind": "Group", "name": "oncall", "apiGroup": "rbac.authorization.k8s.io"},
        {"kind": "Group", "name": "intruders", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    await asyncio.to_thread(
        admin_rbac(b).patch_cluster_role_binding, oncall_name, {"subjects": edited}
    )

    async def restored() -> bool:
        again_a, again_b = await read(a, oncall_name), await read(b, oncall_name)
        return (
            again_a is not None
            and again_a.metadata.uid != made_a.metadata.uid
            and again_b is not None
            and [s.name for s in again_b.subjects] == ["oncall"]
        )

    await until(restored, "the deleted and the edited binding restored", within=SYNC_WITHIN)

    # The profile goes: its bindings go; the one keyferry did not make stays as it was.
    await apply(broker, [everywhere])

    async def removed() -> bool:
        return await read(a, oncall_name) is None and await read(b, oncall_name) is None

    await until(removed, "the removed profile's bindings deleted", within=SYNC_WITHIN)
    still = await read(c, everywhere_name)
    assert still.metadata.uid == their_uid
    assert [s.name for s in still.subjects] == ["someone-else"]
    await apply(broker, [])
    for cluster in (a, b):
        assert await read(cluster, everywhere_name) is None
    await asyncio.to_thread(admin_rbac(c).delete_cluster_role_binding, everywhere_name)


async def test_a_profile_may_bind_only_the_grantable_cluster_roles(broker: Broker) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await apply(broker, [{"name": "too-much", "group": "g", "cluster_role": "cluster-admin"}])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cluster_role" in (caught.value.details() or "")
