"""The bed's provider choice (KEYFERRY_BED_PROVIDER) and the containers provider's pure parts.

No Docker engine runs on this project's machines, so the no-engine path is real: the
tests point DOCKER_HOST at a socket that does not exist (so they mean the same on a
machine with an engine) and let the real docker client fail.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.bed import Bed, BedError, ServerUnavailable
from tests.bed.containers import ContainersProvider
from tests.bed.engine import require_engine
from tests.bed.k3s import admin_credentials, k3s_args
from tests.bed.kube import SHARED_ISSUER, ClusterSpec
from tests.bed.provider import PROVIDER_VAR, ProcessProvider, select_provider
from tests.bed.workspace import Workspace


@pytest.mark.parametrize("env", [{}, {PROVIDER_VAR: ""}, {PROVIDER_VAR: "processes"}])
def test_processes_are_the_default(env: dict[str, str]) -> None:
    assert isinstance(select_provider(env), ProcessProvider)


def test_containers_are_chosen_by_the_variable() -> None:
    provider = select_provider({PROVIDER_VAR: "containers"})
    assert isinstance(provider, ContainersProvider)
    assert provider.name == "containers"
    assert not provider.uses_etcd


def test_an_unknown_provider_fails_loudly() -> None:
    with pytest.raises(BedError, match="'docker' is not known; choose processes or containers"):
        select_provider({PROVIDER_VAR: "docker"})


@pytest.fixture
def no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")


@pytest.mark.usefixtures("no_engine")
def test_no_engine_is_server_unavailable_saying_so() -> None:
    with pytest.raises(ServerUnavailable) as unavailable:
        require_engine()
    message = str(unavailable.value)
    assert message.startswith("Docker engine is not available: KEYFERRY_BED_PROVIDER=containers")
    assert "no Docker engine answers" in message
    assert "unset KEYFERRY_BED_PROVIDER" in message


@pytest.mark.usefixtures("no_engine")
def test_a_containers_bed_without_engine_starts_nothing(tmp_path: Path) -> None:
    bed = Bed(Workspace(tmp_path / "ws"), provider=ContainersProvider())
    for start in (bed.vault, bed.vault_persistent, bed.postgres, bed.mariadb, bed.moto):
        with pytest.raises(ServerUnavailable, match="no Docker engine answers"):
            start()
    with pytest.raises(ServerUnavailable, match="no Docker engine answers"):
        bed.clusters(2)
    assert bed.servers == {}
    bed.stop()


def test_k3s_gets_the_issuer_and_audiences_asked_for() -> None:
    unique = k3s_args(ClusterSpec("a"), "https://127.0.0.1:6000", ("https://127.0.0.1:6000",))
    assert "--kube-apiserver-arg=service-account-issuer=https://127.0.0.1:6000" in unique
    shared = k3s_args(
        ClusterSpec("b", SHARED_ISSUER, ("vault",)), SHARED_ISSUER, (SHARED_ISSUER, "vault")
    )
    assert f"--kube-apiserver-arg=service-account-issuer={SHARED_ISSUER}" in shared
    assert f"--kube-apiserver-arg=api-audiences={SHARED_ISSUER},vault" in shared
    assert "--kube-apiserver-arg=authorization-mode=Node,RBAC" in shared


def test_k3s_admin_credentials_become_files(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    kubeconfig = {
        "clusters": [{"cluster": {"certificate-authority-data": b64("CA")}}],
        "users": [
            {"user": {"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")}}
        ],
    }
    ca, admin = admin_credentials(kubeconfig, tmp_path / "pki")
    assert (ca.read_text(), admin.cert.read_text(), admin.key.read_text()) == ("CA", "CERT", "KEY")
    assert admin.key.stat().st_mode & 0o777 == 0o600
