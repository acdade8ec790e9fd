"""One trace from the pod's agent through the broker to Vault, read back from a real
receiver (issue 23).

The bed's Jaeger (built from its Go module) receives OTLP from `keyferry broker serve`
(tracing on by its settings block) and from a real `keyferry agent run` process (on by the
standard OTEL_* variables), and the admin CLI run as a process. One module-scoped scene:
the agent issues once, then the CLI rotates its lease; the tests read what Jaeger stored.
No wall-clock assertion: each wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker.backends.transit import TransitSigner
from broker.cli.context import CliContext, save_context
from injector.contract import AGENT_SPEC_ENV, AgentSpec, CredentialRequest, FileFormat, Mode
from tests.bed.jaeger import JaegerServer
from tests.bed.kube import KubeCluster
from tests.bed.ports import LOOPBACK
from tests.bed.vault import VaultServer
from tests.bench.served import KEYFERRY, BrokerProcess, broker_process
from tests.scene.admin_helpers import SECURITY
from tests.scene.broker import HMAC_KEY, ROLE, config
from tests.scene.kube_helpers import BoundToken
from tests.scene.polling import until
from tests.scene.stores import sqlite_url
from tests.scene.traces import FAST_EXPORT, AgentProcess, Trace, json_lines, tag, traced_env
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
AGENT, BROKER, CLI = "keyferry-agent", "keyferry-broker", "keyferry-cli"
CREDENTIAL = "orders-db"
WITHIN = 60.0


@dataclass
class Scene:
    broker: BrokerProcess
    agent: AgentProcess
    token: BoundToken
    secrets: list[str]

    def audit(self) -> list[dict[str, Any]]:
        return json_lines(self.broker.config.parent / "audit.jsonl")

    def mine(self, action: str) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r["action"] == action and r.get("pod") == self.token.pod]


@pytest.fixture(scope="module")
def scene(
    tmp_path_factory: pytest.TempPathFactory,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
    jaeger: JaegerServer,
) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("tracing")
    data = config(folder, vault, approle, kube_clusters, sqlite_url(folder))
    data["tracing"] = {"enabled": True, "endpoint": jaeger.otlp_endpoint}
    secrets = [approle[1], data["sealing"]["key"], HMAC_KEY]
    with pytest.MonkeyPatch.context() as env:
        for name, value in FAST_EXPORT.items():
            env.setenv(name, value)
        broker = broker_process(data, folder / "broker", log_level="info")
    try:
        token = mint(kube_clusters["a"], pod_prefix="traced")
        agent = _agent(folder / "agent", broker, token, jaeger)
        try:
            yield Scene(broker, agent, token, [*secrets, token.token])
        finally:
            agent.stop()
    finally:
        broker.stop()


def _agent(
    home: Path, broker: BrokerProcess, token: BoundToken, jaeger: JaegerServer
) -> AgentProcess:
    (home / "secrets").mkdir(parents=True)
    (home / "token").write_text(token.token)
    spec = AgentSpec(
        mode=Mode.SIDECAR,
        cluster=token.cluster,
        broker_address=f"{LOOPBACK}:{broker.port}",
        broker_ca_pem=broker.ca.read_text(),
        directory=str(home / "secrets"),
        token_path=str(home / "token"),
        credentials=(CredentialRequest(name=CREDENTIAL, role=ROLE, format=FileFormat.JSON),),
    )
    log = home / "agent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(KEYFERRY), "agent", "run"],
            env=traced_env(jaeger, **{AGENT_SPEC_ENV: spec.to_json()}),
            stdout=out,
            stderr=out,
        )
    return AgentProcess(process, log, home / "secrets")


async def _trace(jaeger: JaegerServer, trace_id: str, *needed: tuple[str, str]) -> Trace:
    """The trace once Jaeger holds every (service, span name) in `needed`."""

    seen: list[tuple[str, str]] = []

    async def complete() -> Trace | None:
        raw = jaeger.trace(trace_id)
        if raw is None:
            return None
        trace = Trace(raw)
        seen[:] = trace.names()
        return trace if set(needed) <= set(seen) else None

    try:
        return await until(complete, f"trace {trace_id} with {needed} in Jaeger", within=WITHIN)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it has {seen}") from None


def _linked(trace: Trace) -> None:
    """One root; every other span's parent is in the trace."""
    ids = {s["spanID"] for s in trace.spans}
    roots = [s for s in trace.spans if trace.parent(s) is None]
    assert len(roots) == 1, [s["operationName"] for s in roots]
    orphans = [s["operationName"] for s in trace.spans if trace.parent(s) not in ids | {None}]
    assert orphans == []


async def test_one_issue_is_one_trace_from_the_agent_through_the_broker_to_vault(
    scene: Scene, jaeger: JaegerServer
) -> None:
    async def written() -> dict[str, Any] | None:
        lines = scene.agent.events("credential.written")
        return lines[0] if lines else None

    line = await until(written, "the agent wrote its credential", within=WITHIN)
    trace_id = line["trace_id"]
    trace = await _trace(
        jaeger,
        trace_id,
        (AGENT, "agent issue"),
        (AGENT, "BrokerService/Issue"),
        (BROKER, "BrokerService/Issue"),
        (BROKER, "store complete_issue"),
    )
    _linked(trace)
    if os.environ.get("KEYFERRY_TRACE_OUT"):  # the picture in docs/operations.md (tracesvg)
        Path(os.environ["KEYFERRY_TRACE_OUT"]).write_text(json.dumps(trace.raw))
    root = trace.one("agent issue", AGENT)
    client = trace.one("BrokerService/Issue", AGENT)
    server = trace.one("BrokerService/Issue", BROKER)
    assert trace.parent(root) is None
    assert trace.parent(client) == root["spanID"]
    assert trace.parent(server) == client["spanID"]
    assert tag(server, "span.kind") == "server"
    steps = {s["operationName"] for s in trace.below(server)}
    assert {"authenticate", "pod check", "policy", "audit"} <= steps
    assert {"store admit_issue", "store complete_issue"} <= steps
    vault_calls = [s for s in trace.below(server) if s["operationName"].startswith("vault ")]
    assert vault_calls
    assert all(trace.service(s) == BROKER for s in trace.below(server))
    assert all(len(tag(s, "vault.request_id") or "") == 36 for s in vault_calls)
    # The audit records and the broker's log lines of the call carry the same trace id.
    active = scene.mine("lease.active")
    assert [r["trace_id"] for r in active] == [trace_id]
    assert {r["trace_id"] for r in scene.mine("issue")} == {trace_id}
    logged = [x for x in json_lines(scene.broker.log) if x.get("event") == "lease issued"]
    assert [x["trace_id"] for x in logged] == [trace_id]


async def test_a_rotation_trace_runs_from_the_cli_through_the_push_to_the_agents_ack(
    scene: Scene, jaeger: JaegerServer
) -> None:
    async def active() -> list[dict[str, Any]]:
        return scene.mine("lease.active")

    lease_id = (await until(active, "the lease was issued", within=WITHIN))[0]["lease_id"]
    context = scene.broker.config.parent / "context.yaml"
    ca = scene.broker.settings.admin.client_ca
    assert ca is not None
    save_context(
        context,
        CliContext(
            address=f"{LOOPBACK}:{scene.broker.admin_port}",
            ca=ca,
            cert=ca.parent / "operators" / f"{SECURITY}.crt",
            key=ca.parent / "operators" / f"{SECURITY}.key",
        ),
    )
    rotated = subprocess.run(
        [str(KEYFERRY), "rotate", "--lease", lease_id, "--context", str(context), "-o", "json"],
        env=traced_env(jaeger),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stderr

    async def handled() -> dict[str, Any] | None:
        lines = scene.agent.events("credential.rotated")
        return lines[0] if lines else None

    line = await until(handled, "the agent put the rotation in place", within=WITHIN)
    trace_id, new_lease = line["trace_id"], line["lease_id"]

    async def acked() -> list[dict[str, Any]]:  # the snapshot's Ack at open was another
        return [r for r in scene.mine("lease.acked") if r["lease_id"] == new_lease]

    assert [r["trace_id"] for r in await until(acked, "the Ack was audited")] == [trace_id]
    trace = await _trace(
        jaeger,
        trace_id,
        (CLI, "keyferry admin"),
        (BROKER, "watch push"),
        (AGENT, "watch rotated"),
        (BROKER, "watch ack"),
    )
    _linked(trace)
    assert trace.parent(trace.one("keyferry admin", CLI)) is None
    # The rotation's push, and (after the Ack revoked the old generation) the revocation's.
    pushes = {tag(s, "keyferry.event"): s for s in trace.named("watch push", BROKER)}
    push = pushes["rotated"]
    handling = trace.one("watch rotated", AGENT)
    ack = trace.one("watch ack", BROKER)
    assert trace.parent(handling) == push["spanID"]
    assert trace.parent(ack) == handling["spanID"]
    assert "vault read" in {s["operationName"] for s in trace.spans}


async def test_no_secret_in_any_exported_span(scene: Scene, jaeger: JaegerServer) -> None:
    """The exposure scan over every span Jaeger received from the three services: no
    credential value, bearer token, AppRole secret, sealing or HMAC key."""
    files = list(scene.agent.directory.glob("*"))
    assert files
    values = [v for f in files for v in json.loads(f.read_text()).values()]
    secrets = [s for s in [*scene.secrets, *values] if len(s) >= 8]
    assert len(secrets) >= 5
    exported = json.dumps([jaeger.traces(service) for service in (AGENT, BROKER, CLI)])
    assert "vault.request_id" in exported  # the scan read real spans
    leaks = [secret[:4] + "…" for secret in secrets if secret in exported]
    assert leaks == []
