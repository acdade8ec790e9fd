"""Operators are people, and a certificate can be taken back (issue 18).

- One person holding two operator names (certificates with different CNs, the same
  `urn:keyferry:operator:` identity) cannot approve their own request: approvals compare
  the identity, not the name.
- A certificate put on the admin listener's deny-list (`keyferry admin revoke-operator`,
  the broker's admin.revoked_operators) is refused from the next call on, while it is
  still within its validity; other operators are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from typer.testing import CliRunner

from broker.api.v1 import access_pb2, access_pb2_grpc, roles_pb2, roles_pb2_grpc
from broker.backends.transit import TransitSigner
from broker.cli.main import app as cli
from broker.identity.admin_pki import AdminCa
from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import Broker, config, start_broker
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info

pytestmark = pytest.mark.bed
PERSON = "alice@example.com"
DEV, SEC = "alice-dev", "alice-sec"  # one person, two operator names


@pytest.fixture
async def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
) -> AsyncIterator[Broker]:
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    deny_list = tmp_path / "revoked-operators"
    deny_list.write_text("# revoked operator certificates\n")
    data["admin"]["revoked_operators"] = str(deny_list)
    ca = AdminCa.load(Path(data["admin"]["client_ca"]).parent)
    ca.issue_operator(DEV, ["developers"], identity=PERSON)
    ca.issue_operator(SEC, ["security"], identity=PERSON)
    running = await start_broker(data, tmp_path)
    try:
        yield running
    finally:
        await running.server.stop(1)


async def access_call(broker: Broker, operator: str, method: str, request: Any) -> Any:
    async with broker.admin_channel(operator) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        return await getattr(stub, method)(request)


async def test_one_person_under_two_operator_names_cannot_approve_their_own_request(
    broker: Broker,
) -> None:
    asked = await access_call(
        broker,
        DEV,
        "RequestGrant",
        access_pb2.RequestGrantRequest(
            role="orders-db-ro", duration=duration_pb2.Duration(seconds=1800), reason="INC-18"
        ),
    )
    approve = access_pb2.ApproveGrantRequest(grant_id=asked.grant.id)
    with pytest.raises(grpc.RpcError) as own:
        await access_call(broker, SEC, "ApproveGrant", approve)
    assert own.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(own.value).reason == "SELF_APPROVAL"
    approved = await access_call(broker, SECURITY, "ApproveGrant", approve)  # someone else
    assert approved.grant.decided_by == SECURITY


async def test_a_revoked_operator_certificate_is_refused_from_the_next_call(
    broker: Broker,
) -> None:
    listing = access_pb2.ListGrantsRequest()
    await access_call(broker, SECURITY, "ListGrants", listing)  # served before
    settings = broker.settings.admin
    assert settings.client_ca is not None
    assert settings.revoked_operators is not None
    runner = CliRunner()
    revoke = [
        "admin",
        "revoke-operator",
        SECURITY,
        "--dir",
        str(settings.client_ca.parent),
        "--deny-list",
        str(settings.revoked_operators),
    ]
    done = await asyncio.to_thread(runner.invoke, cli, revoke)
    assert done.exit_code == 0, done.output

    with pytest.raises(grpc.RpcError) as refused:
        await access_call(broker, SECURITY, "ListGrants", listing)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "was revoked" in (refused.value.details() or "")
    async with broker.admin_channel(PLATFORM) as channel:  # another operator is served
        stub: Any = roles_pb2_grpc.RolesServiceStub(channel)
        assert (await stub.ListRoles(roles_pb2.ListRolesRequest())).roles
