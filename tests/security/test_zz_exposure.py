"""No secret value in any output: runs last in tests/security (file order), and scans every
log line the session's brokers and webhooks wrote, every /metrics page, every error message,
every audit record gathered so far and every page of `keyferry console` (while a lease is
live) for every secret handed out so far (the database
credentials issued, the bearer tokens used, the broker's AppRole secret, sealing key and
audit HMAC key). It issues, renews, refuses and releases on its own first, so it never
scans nothing, even when run alone.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from broker.api.v1 import broker_pb2
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import SECURITY
from tests.scene.broker import Broker, issue, refused
from tests.scene.console import running_console
from tests.scene.workloads import bearer, broker_stub, mint

from .attack_scene import Exposure, audit_records, metrics_text

pytestmark = pytest.mark.bed


async def test_no_secret_value_in_any_log_metric_error_or_audit_record(
    broker: Broker, kube_clusters: dict[str, KubeCluster], exposure: Exposure, tmp_path: Path
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="exposed")
    issued = await issue(broker, token)
    exposure.handed_out(token.token, *issued.credential.values.values())
    with running_console(broker.context_file(tmp_path, SECURITY)) as console:
        async with httpx.AsyncClient(base_url=console.base) as browser:
            await browser.get(f"/?token={console.token}")  # the session cookie
            for path in ("/", "/leases", "/grants", "/audit", f"/audit?lease={issued.lease.id}"):
                page = await browser.get(path)
                assert page.status_code == 200, path
                exposure.said("console", page.text)
    assert any(issued.lease.id in text for origin, text in exposure.texts if origin == "console")
    async with broker_stub(broker.port, broker.ca) as stub:
        await stub.Renew(broker_pb2.RenewRequest(lease_id=issued.lease.id), metadata=bearer(token))
        with pytest.raises(grpc.RpcError) as bad_name:
            await stub.Issue(
                broker_pb2.IssueRequest(credential_name="../x", role="orders-db-ro"),
                metadata=bearer(token),
            )
        exposure.refusal(bad_name.value)
        await stub.Release(
            broker_pb2.ReleaseRequest(lease_id=issued.lease.id), metadata=bearer(token)
        )
    exposure.refusal(await refused(broker, token.token + "tampered"))
    exposure.said("metrics", await metrics_text(broker))
    exposure.said("audit log", str(audit_records(broker)))
    exposure.said("log", exposure.log_file.read_text())

    assert len(exposure.secrets) >= 5
    assert '"event": "issue refused"' in exposure.log_file.read_text()  # the logs were caught
    assert any("lease.active" in text for origin, text in exposure.texts if origin == "audit log")
    leaks = [
        (origin, secret[:4] + "…")
        for secret in sorted(exposure.secrets)
        for origin, text in exposure.texts
        if secret in text
    ]
    assert leaks == [], f"secret values found in output: {leaks}"
