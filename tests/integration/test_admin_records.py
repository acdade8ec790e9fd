"""The admin listener's reading calls on the bed (issue 22): the audit trail paged and
filtered, verified by the running broker, the activity per minute, and leases listed and
counted by selector; each decided by Cedar and audited; `keyferry audit list`, `keyferry
audit verify` (without --config) and `keyferry leases list|count` on top of them.

A real broker (the scene's, SQLite store, Vault, PostgreSQL behind orders-db-ro, clusters
a and b), one test for what works and one for what is refused, sharing nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner, Result

from broker.api.v1 import audit_pb2, audit_pb2_grpc, leases_pb2, leases_pb2_grpc, rotation_pb2
from broker.cli.main import app as cli
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import Broker, issue
from tests.scene.leases import rotate
from tests.scene.workloads import error_info, mint

pytestmark = pytest.mark.bed


async def keyferry(broker: Broker, folder: Path, *args: str, operator: str = SECURITY) -> Result:
    context = str(broker.context_file(folder, operator))
    return await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--context", context], catch_exceptions=False
    )


def parsed(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def audit_lines(broker: Broker) -> list[dict[str, Any]]:
    return [json.loads(line) for line in broker.settings.audit.log.read_text().splitlines()]


async def test_an_operator_reads_the_trail_and_the_leases_through_the_admin_listener(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    tokens = [mint(kube_clusters["a"]), mint(kube_clusters["a"]), mint(kube_clusters["b"])]
    issued = [await issue(broker, token) for token in tokens]
    ids = [answer.lease.id for answer in issued]
    rotated = await rotate(broker, ids[0], timedelta(hours=1))

    listed = parsed(await keyferry(broker, tmp_path, "leases", "list", "--all", "-o", "json"))
    assert {row["lease"] for row in listed} == {*ids[1:], rotated.lease.id}  # live ones
    assert all("password" not in json.dumps(row) for row in listed)
    in_a = parsed(
        await keyferry(broker, tmp_path, "leases", "list", "--cluster", "a", "--state", "revoking",
                       "-o", "json")
    )  # fmt: skip
    assert [row["lease"] for row in in_a] == [ids[0]]
    assert in_a[0]["revoke_after"] is not None
    counted = parsed(
        await keyferry(
            broker, tmp_path, "leases", "count", "--all", "--by", "cluster", "-o", "json"
        )
    )
    assert {(row["cluster"], row["leases"]) for row in counted} == {("a", 2), ("b", 1)}
    total = parsed(await keyferry(broker, tmp_path, "leases", "count", "--all", "-o", "json"))
    assert total == {"leases": 3}

    async with broker.admin_channel() as channel:
        leases: Any = leases_pb2_grpc.LeasesServiceStub(channel)
        selector = rotation_pb2.LeaseSelector(all=True)
        first = await leases.ListLeases(
            leases_pb2.ListLeasesRequest(selector=selector, page_size=2)
        )
        assert len(first.leases) == 2
        assert first.next_page_token
        second = await leases.ListLeases(
            leases_pb2.ListLeasesRequest(
                selector=selector, page_size=2, page_token=first.next_page_token
            )
        )
        assert len(second.leases) == 1
        assert not second.next_page_token
        paged = [listed.lease.id for listed in [*first.leases, *second.leases]]
        assert paged == sorted({*ids[1:], rotated.lease.id})

        trail: Any = audit_pb2_grpc.AuditServiceStub(channel)
        page = await trail.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(actions=["lease.active"], page_size=2)
        )
        assert len(page.records) == 2
        assert page.next_page_token
        rest = await trail.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(
                actions=["lease.active"], page_size=10, page_token=page.next_page_token
            )
        )
        active = [entry.lease_id for entry in [*page.records, *rest.records]]
        assert active == [rotated.lease.id, ids[2], ids[1], ids[0]]  # newest first
        seqs = [entry.seq for entry in [*page.records, *rest.records]]
        assert seqs == sorted(seqs, reverse=True)
        assert json.loads(page.records[0].line)["hash"] == page.records[0].hash

        activity = await trail.AuditActivity(audit_pb2.AuditActivityRequest(hours=1))
        assert len(activity.minutes) == 61
        assert sum(m.issued for m in activity.minutes) == 4
        assert sum(m.rotated for m in activity.minutes) == 1

    assert await broker.server.runtime.checkpoint()
    verified = parsed(await keyferry(broker, tmp_path, "audit", "verify", "-o", "json"))
    assert verified["ok"] is True
    assert verified["checkpoints_verified"] >= 1

    rotations = parsed(
        await keyferry(broker, tmp_path, "audit", "list", "--action", "rotate", "--principal",
                       SECURITY, "--since", "1h", "-o", "json")
    )  # fmt: skip
    assert [(row["lease_id"], row["decision"]) for row in rotations] == [(ids[0], "allow")]
    about = parsed(
        await keyferry(broker, tmp_path, "audit", "list", "--lease", ids[1], "-o", "json")
    )
    assert "lease.active" in {row["action"] for row in about}
    assert {row["lease_id"] for row in about} == {ids[1]}

    reads = [r for r in audit_lines(broker) if r["action"].startswith(("audit.", "leases."))]
    assert {r["action"] for r in reads} == {
        "audit.list", "audit.activity", "audit.verify", "leases.list", "leases.count"
    }  # fmt: skip
    assert {(r["who"]["name"], r["decision"]) for r in reads} == {(SECURITY, "allow")}
    assert all(r["policy_ids"] == ["security-operators"] for r in reads)


async def test_reading_is_refused_without_a_permit_and_outside_its_bounds(
    broker: Broker, tmp_path: Path
) -> None:
    async def refused(call: Any, operator: str = SECURITY) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            async with broker.admin_channel(operator) as channel:
                await call(channel)
        return caught.value

    def records(**fields: Any) -> Any:
        request = audit_pb2.ListAuditRecordsRequest(**fields)
        return lambda channel: audit_pb2_grpc.AuditServiceStub(channel).ListAuditRecords(request)

    def leases(**fields: Any) -> Any:
        request = leases_pb2.ListLeasesRequest(**fields)
        return lambda channel: leases_pb2_grpc.LeasesServiceStub(channel).ListLeases(request)

    denied = await refused(records(), PLATFORM)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "audit" in (denied.details() or "")
    every = rotation_pb2.LeaseSelector(all=True)
    denied = await refused(leases(selector=every), PLATFORM)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    result = await keyferry(broker, tmp_path, "audit", "list", operator=PLATFORM)
    assert result.exit_code == 1
    assert "no policy permits" in result.output

    for call, field in [
        (records(page_size=501), "page_size"),
        (records(actions=[f"a{i}" for i in range(21)]), "actions"),
        (records(actions=["Not An Action"]), "actions[0]"),
        (records(principal="p" * 254), "principal"),
        (records(page_token="x"), "page_token"),
        (leases(selector=every, page_size=501), "page_size"),
        (leases(selector=every, states=["alive"]), "states[0]"),
        (leases(selector=rotation_pb2.LeaseSelector()), "selector"),
    ]:
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error_info(error).metadata["field"] == field

    async def hours(channel: Any) -> Any:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        return await stub.AuditActivity(audit_pb2.AuditActivityRequest(hours=25))

    error = await refused(hours)
    assert error_info(error).metadata["field"] == "hours"

    lines = audit_lines(broker)
    denials = {(r["action"], r["who"]["name"]) for r in lines if r.get("decision") == "deny"}
    assert denials == {("audit.list", PLATFORM), ("leases.list", PLATFORM)}
