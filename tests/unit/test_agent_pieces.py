"""The agent's small parts: backoff, the spec, check, token reading, finding the app's
processes in a fake /proc laid out as a shared-PID-namespace pod, and gRPC failures mapped
to the agent's errors with the broker's ErrorInfo and RetryInfo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from injector.agent.backoff import Backoff
from injector.agent.client import _mapped
from injector.agent.errors import (
    BrokerLimited,
    BrokerUnavailable,
    SpecError,
    TokenError,
)
from injector.agent.main import agent_for
from injector.agent.procs import app_processes
from injector.agent.spec import load_spec, parse_spec
from injector.agent.token import read_token
from injector.contract import AGENT_SPEC_ENV, AgentSpec, CredentialRequest, Mode
from injector.probe import check

from .fresh_imports import modules_loaded_by


def spec(directory: Path) -> AgentSpec:
    return AgentSpec(
        mode=Mode.SIDECAR,
        cluster="a",
        broker_address="127.0.0.1:1",
        directory=str(directory),
        token_path=str(directory / "token"),
        credentials=(
            CredentialRequest(name="db", role="orders-db-ro"),
            CredentialRequest(name="cfg", role="app-config"),
        ),
    )


def test_backoff_is_full_jitter_doubling_to_the_cap() -> None:
    ceilings: list[float] = []

    def highest(low: float, high: float) -> float:
        ceilings.append(high)
        return high

    backoff = Backoff(base=0.5, cap=4.0, uniform=highest)
    delays = [backoff.next_delay() for _ in range(6)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert delays == ceilings
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert 0.0 <= Backoff(base=1, cap=2).next_delay() <= 1.0


def test_the_spec_sets_the_backoff_and_older_specs_get_the_defaults(tmp_path: Path) -> None:
    written = spec(tmp_path).model_dump(mode="json")
    del written["backoff_base_seconds"], written["backoff_cap_seconds"]  # a spec from before
    old = load_spec({AGENT_SPEC_ENV: json.dumps(written)})
    assert (old.backoff_base_seconds, old.backoff_cap_seconds) == (1.0, 30.0)
    bad_values: list[tuple[dict[str, float], str]] = [
        ({"backoff_base_seconds": 0}, "at backoff_base_seconds: Input should be greater than 0"),
        ({"backoff_cap_seconds": -1}, "at backoff_cap_seconds: Input should be greater than 0"),
        ({"backoff_cap_seconds": 1e9}, "at backoff_cap_seconds: Input should be less than or"),
        (
            {"backoff_base_seconds": 5, "backoff_cap_seconds": 2},
            "backoff_cap_seconds (2) is below backoff_base_seconds (5)",
        ),
    ]
    for changes, words in bad_values:
        with pytest.raises(SpecError) as bad:
            load_spec({AGENT_SPEC_ENV: json.dumps({**written, **changes})})
        assert words in str(bad.value)


async def test_the_agent_runs_with_the_backoff_of_its_spec(tmp_path: Path) -> None:
    custom = AgentSpec.model_validate(
        {**spec(tmp_path).model_dump(), "backoff_base_seconds": 0.25, "backoff_cap_seconds": 4}
    )

    def highest(low: float, high: float) -> float:
        return high

    client, session = agent_for(parse_spec(custom.to_json()), highest)
    try:
        assert client.reconnect_cap == 4.0
        assert [session.backoff.next_delay() for _ in range(6)] == [0.25, 0.5, 1, 2, 4, 4]
        default_client, default_session = agent_for(parse_spec(spec(tmp_path).to_json()))
        assert default_client.reconnect_cap == 30.0
        assert (default_session.backoff.base, default_session.backoff.cap) == (1.0, 30.0)
        await default_client.close()
    finally:
        await client.close()


def test_check_fails_until_every_file_exists(tmp_path: Path) -> None:
    env = {AGENT_SPEC_ENV: spec(tmp_path).model_dump_json()}
    assert check(env) == 1
    (tmp_path / "db").write_text("x")
    assert check(env) == 1
    (tmp_path / "cfg").write_text("x")
    assert check(env) == 0
    assert check({}) == 2


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="not set"):
        load_spec({})
    with pytest.raises(SpecError, match="at credentials"):
        load_spec(
            {
                AGENT_SPEC_ENV: '{"mode": "sidecar", "cluster": "a", "broker_address": "x",'
                ' "directory": "/d", "token_path": "/t", "credentials": []}'
            }
        )


def test_token_is_read_fresh_and_a_missing_one_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    with pytest.raises(TokenError, match="keyferry-token volume"):
        read_token(path)
    path.write_text("one\n")
    assert read_token(path) == "one"
    path.write_text("two")
    assert read_token(path) == "two"
    path.write_text("")
    with pytest.raises(TokenError, match="empty"):
        read_token(path)


def _proc(root: Path, pid: int, ppid: int, mnt: str, comm: str = "sh") -> None:
    folder = root / str(pid)
    (folder / "ns").mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1")
    os.symlink(f"mnt:[{mnt}]", folder / "ns" / "mnt")


def test_app_processes_are_other_containers_first_processes(tmp_path: Path) -> None:
    _proc(tmp_path, 1, 0, "pause")  # the pod's pause process
    _proc(tmp_path, 10, 1, "agent", "keyferry")  # the agent itself
    _proc(tmp_path, 11, 0, "agent", "python3 -I -m injector.probe")  # its probe
    _proc(tmp_path, 20, 1, "app", "nginx: master (x) ) y")  # the app's main process
    _proc(tmp_path, 21, 20, "app", "nginx: worker")  # its child: left to it
    _proc(tmp_path, 30, 0, "app2", "redis")  # a second app container
    (tmp_path / "self").mkdir()
    assert app_processes(tmp_path, self_pid=10) == [20, 30]


def rich_error(code: grpc.StatusCode, reason: str, retry_ms: int) -> grpc.aio.AioRpcError:
    """An error as the broker sends it: status details with ErrorInfo and RetryInfo."""
    message = f"{reason}: try again later"
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="keyferry"))
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(retry_ms)
    status.details.add().Pack(retry)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_unavailable_keeps_the_brokers_retry_info() -> None:
    with pytest.raises(BrokerUnavailable) as vault_down, _mapped("Issue", "db"):
        raise rich_error(grpc.StatusCode.UNAVAILABLE, "VAULT_UNAVAILABLE", 2000)
    assert not isinstance(vault_down.value, BrokerLimited)
    assert (vault_down.value.code, vault_down.value.reason) == ("UNAVAILABLE", "VAULT_UNAVAILABLE")
    assert vault_down.value.retry_after == 2.0

    with pytest.raises(BrokerLimited) as limited, _mapped("Issue", "db"):
        raise rich_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 1500)
    assert limited.value.retry_after == 1.5


def test_the_agent_loads_none_of_the_brokers_own_code() -> None:
    """`keyferry agent run` in every injected pod, on its startup path: the shared names
    only, never the role catalog, the scheduler, the store or Vault; and none of the
    libraries the agent has no use for (issue 19: its memory)."""
    loaded = modules_loaded_by(
        "broker.cli.entry",
        "injector.agent.launch",
        "injector.agent.main",
        "injector.agent.client",
        "injector.agent.session",
    )
    assert "grpc.aio" in loaded
    ours = {m for m in loaded if m.split(".")[0] == "broker"}
    # Traces go through the agent's own face (injector/agent/tracing.py): broker.tracing
    # (pydantic) and OpenTelemetry are imported only once tracing is on (test_tracing.py).
    assert ours <= {"broker", "broker.cli", "broker.cli.entry", "broker.names"}
    assert "injector.agent.tracing" in loaded
    assert sorted(m for m in loaded if m.startswith("opentelemetry")) == []
    # The agent writes and reads its few messages itself (injector/agent/messages.py).
    assert sorted(m for m in loaded if m.startswith(("google", "grpc_status"))) == []
    unused = {"pydantic", "pydantic_core", "structlog", "typer", "click", "rich", "yaml"}
    assert sorted(m for m in loaded if m.split(".")[0] in unused) == []
    assert "injector.contract" not in loaded


COMMAND = """
import sys
from broker.cli import entry
before = set(sys.modules)
sys.argv = ["keyferry", "agent", *sys.argv[1:]]
try:
    entry.main()
except SystemExit as exit:
    print(exit.code)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_keyferry_agent_check_loads_the_standard_library_only(tmp_path: Path) -> None:
    """`keyferry agent check` (what a person runs in the pod) is the probe's own check."""
    environ = {AGENT_SPEC_ENV: spec(tmp_path).to_json(), "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", COMMAND, "check"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    code, loaded = done.stdout.splitlines()
    assert code == "1"  # the files are missing
    foreign = [
        name
        for name in loaded.split()
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("injector", "injector.probe", "injector.agent", "injector.agent.launch")
    ]
    assert foreign == []


def test_keyferry_agent_run_loads_no_python_ssl_and_nothing_it_does_not_use() -> None:
    """The agent's TLS is gRPC's own: Python's ssl (OpenSSL's libraries, about 4 MiB of
    resident memory) stays out of `keyferry agent run`, and so do pydantic and the rest."""
    environ = {"PATH": os.environ.get("PATH", "")}  # no spec: exit 2 after the imports
    done = subprocess.run(
        [sys.executable, "-I", "-c", COMMAND + IMPORT_AGENT, "run"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    code, loaded = lines[0], lines[-1]
    assert code == "2"
    modules = set(loaded.split())
    assert {"asyncio", "grpc.aio", "injector.agent.session"} <= modules
    assert "_ssl" not in modules  # the extension that maps OpenSSL ("ssl" is there: None)
    unused = {"pydantic", "structlog", "typer", "click", "rich", "google", "grpc_status"}
    assert sorted(m for m in modules if m.split(".")[0] in unused) == []


# `run` exits at the missing spec before it loads the session: load it, as `run` would next.
IMPORT_AGENT = """
import injector.agent.session, injector.agent.client
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_keyferry_agent_run_leaves_ssl_alone_when_tracing_is_on() -> None:
    """A traced agent (an OTEL_* endpoint set) may need Python's ssl for its exporter: `run`
    keeps it importable then, and blocks it otherwise."""
    probe_ssl = "\ntry:\n    import ssl\n    print('ssl')\nexcept ImportError:\n    print('none')\n"
    found: dict[str, str] = {}
    for endpoint in ("", "http://127.0.0.1:4317"):
        environ = {"PATH": os.environ.get("PATH", ""), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        done = subprocess.run(
            [sys.executable, "-I", "-c", COMMAND + probe_ssl, "run"],
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        )
        found[endpoint] = done.stdout.splitlines()[-1]
    assert found == {"": "none", "http://127.0.0.1:4317": "ssl"}
