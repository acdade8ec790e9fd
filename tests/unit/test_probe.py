"""The agent's probe (injector/probe.py): the check the startup and readiness probes run, its
agreement with the spec's model, and that a probe loads the standard library only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from injector.agent.errors import SpecError
from injector.agent.spec import load_spec
from injector.contract import PROBE_COMMAND, AgentSpec, CredentialRequest, Mode
from injector.probe import AGENT_SPEC_ENV, EXIT_MISSING, EXIT_OK, EXIT_SPEC, check

from .fresh_imports import modules_loaded_by


def spec(directory: Path, *names: str) -> AgentSpec:
    return AgentSpec(
        mode=Mode.SIDECAR,
        cluster="a",
        broker_address="broker:8443",
        directory=str(directory),
        token_path="/keyferry/token/token",
        credentials=tuple(CredentialRequest(name=n, role="orders-db-ro") for n in names),
    )


def env(document: Any) -> dict[str, str]:
    return {AGENT_SPEC_ENV: document if isinstance(document, str) else json.dumps(document)}


def test_passes_once_every_file_exists_and_fails_again_when_one_goes(tmp_path: Path) -> None:
    environ = env(spec(tmp_path, "db", "cfg").model_dump_json())
    assert check(environ) == EXIT_MISSING
    (tmp_path / "db").write_text("x")
    assert check(environ) == EXIT_MISSING
    (tmp_path / "cfg").write_text("x")
    assert check(environ) == EXIT_OK
    (tmp_path / "db").unlink()  # a credential ended, or its lease was revoked
    assert check(environ) == EXIT_MISSING


def test_a_directory_in_a_files_place_is_missing(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    assert check(env(spec(tmp_path, "db").model_dump_json())) == EXIT_MISSING


VALID = {"version": 1, "directory": "/keyferry/secrets", "credentials": [{"name": "db"}]}
INVALID = {
    "not JSON": "{",
    "not an object": [],
    "another version": {**VALID, "version": 2},
    "a relative directory": {**VALID, "directory": "keyferry/secrets"},
    "no credentials": {**VALID, "credentials": []},
    "a credential without a name": {**VALID, "credentials": [{"role": "x"}]},
    "a name leaving the directory": {**VALID, "credentials": [{"name": "../etc"}]},
    "a name ending in a newline": {**VALID, "credentials": [{"name": "db\n"}]},
    "a name too long": {**VALID, "credentials": [{"name": "d" * 49}]},
}


@pytest.mark.parametrize("problem", INVALID)
def test_a_spec_the_model_refuses_is_refused(
    problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    document = INVALID[problem]
    full = (
        document
        if not isinstance(document, dict)
        else {
            "mode": "sidecar",
            "cluster": "a",
            "broker_address": "broker:8443",
            "token_path": "/keyferry/token/token",
            **document,
        }
    )
    with pytest.raises(SpecError):
        load_spec(env(full))
    assert check(env(full)) == EXIT_SPEC
    assert AGENT_SPEC_ENV in capsys.readouterr().err


def test_no_spec_is_refused_with_the_variable_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert check({}) == EXIT_SPEC
    assert f"{AGENT_SPEC_ENV} is not set" in capsys.readouterr().err


def test_the_probe_command_runs_it(tmp_path: Path) -> None:
    """The webhook's exec command, with this interpreter for the image's `python3`."""
    argv = [sys.executable, *PROBE_COMMAND[1:]]
    environ = env(spec(tmp_path, "db").model_dump_json())
    missing = subprocess.run(argv, env=environ, capture_output=True, check=False)
    assert missing.returncode == EXIT_MISSING
    (tmp_path / "db").write_text("x")
    assert subprocess.run(argv, env=environ, check=False).returncode == EXIT_OK
    refused = subprocess.run(argv, env={}, capture_output=True, text=True, check=False)
    assert (refused.returncode, refused.stderr.split(":")[0]) == (EXIT_SPEC, "keyferry probe")


def test_a_probe_loads_nothing_but_the_standard_library() -> None:
    loaded = modules_loaded_by("injector.probe")
    assert "injector.probe" in loaded
    foreign = [
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("injector", "injector.probe")
    ]
    assert foreign == []
