"""keyferry's images in real containers: built by the bed (cached), imported into a containerd
of this test's own (own root, state and socket, no CRI), run by runc.

What a structural lint of the Dockerfile (tests/unit/test_images.py) cannot show: that the
archives import under the exact names the chart renders, that each entrypoint starts as the
numeric non-root user, that the virtualenv's interpreter resolves on the base it was built
on, that no pip or compiler is left, and that the end-to-end tests' app has its clients.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from injector.contract import PROBE_COMMAND
from injector.probe import AGENT_SPEC_ENV, EXIT_SPEC
from tests.bed import ServerUnavailable
from tests.bed.images import APP_REFERENCE, TARGETS, USER, Image, ImageBuilder, archive_config
from tests.bed.moto import REGION, MotoServer
from tests.bed.postgres import PostgresServer
from tests.conftest import need

pytestmark = pytest.mark.bed

NAMESPACE = "keyferry-images-test"
CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


@dataclass
class Runtime:
    """containerd started by this test, and the ``ctr`` that talks to it."""

    process: subprocess.Popen[bytes]
    socket: Path

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def run(
        self, reference: str, *command: str, env: dict[str, str] | None = None, host: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in a fresh container of ``reference``, as the image's user; with
        ``host``, in the host's network namespace (to reach the bed's loopback servers)."""
        options = [f"--env={name}={value}" for name, value in (env or {}).items()]
        if host:
            options.append("--net-host")
        name = f"t-{uuid.uuid4().hex[:12]}"
        return self.ctr("run", "--rm", *options, reference, name, *command)


def _start_containerd(folder: Path) -> Runtime:
    for program in ("containerd", "ctr", "runc"):
        if shutil.which(program) is None:
            raise ServerUnavailable(
                "containerd", f"{program} is not installed", "apt-get install containerd runc"
            )
    socket = folder / "containerd.sock"
    (folder / "config.toml").write_text(CONFIG.format(root=folder, socket=socket))
    log = (folder / "containerd.log").open("wb")
    process = subprocess.Popen(
        ["containerd", "--config", str(folder / "config.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runtime = Runtime(process, socket)
    deadline = time.monotonic() + 30
    while runtime.ctr("version").returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ServerUnavailable(
                "containerd",
                f"it did not answer on {socket}: {(folder / 'containerd.log').read_text()[-1500:]}",
                "run as root on a machine with cgroups and overlayfs",
            )
        time.sleep(0.2)
    return runtime


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    return {image.name: image for image in need(ImageBuilder().all)}


@pytest.fixture(scope="module")
def runtime(
    images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("containerd")
    started = need(lambda: _start_containerd(folder))
    try:
        for image in images.values():
            imported = started.ctr("images", "import", str(image.archive))
            assert imported.returncode == 0, imported.stderr
        yield started
    finally:
        started.process.terminate()
        started.process.wait(timeout=30)
        subprocess.run(
            ["umount", "--recursive", "--lazy", str(folder)], check=False, capture_output=True
        )


def test_archives_import_under_the_names_the_chart_renders(
    runtime: Runtime, images: dict[str, Image]
) -> None:
    listed = runtime.ctr("images", "list", "--quiet").stdout.split()
    assert sorted(listed) == sorted(image.reference for image in images.values())
    for target in TARGETS:
        assert images[target].reference == f"localhost/keyferry/{target}:0.1.0"
    assert images["app"].reference == APP_REFERENCE


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoint_runs_as_the_numeric_non_root_user(
    runtime: Runtime, images: dict[str, Image], target: str
) -> None:
    config = archive_config(images[target].archive)
    assert config["User"] == USER
    assert config["Entrypoint"] == ["keyferry"]
    reference = images[target].reference
    identity = runtime.run(reference, "id", "-u")
    assert identity.stdout.strip() == USER.split(":")[0], identity.stderr
    shown = runtime.run(reference, *config["Entrypoint"], "--help")
    assert shown.returncode == 0, shown.stderr
    assert "broker" in shown.stdout
    assert "agent" in shown.stdout


@pytest.mark.parametrize(
    ("target", "cmd"),
    [
        ("broker", ["broker", "serve", "--config", "/etc/keyferry/broker.yaml"]),
        ("webhook", ["webhook", "serve", "--config", "/etc/keyferry/webhook.yaml"]),
        ("agent", ["agent", "run"]),
    ],
)
def test_each_default_command_exists(
    runtime: Runtime, images: dict[str, Image], target: str, cmd: list[str]
) -> None:
    assert archive_config(images[target].archive)["Cmd"] == cmd
    subcommand = cmd[: cmd.index("--config")] if "--config" in cmd else cmd[:1]
    shown = runtime.run(images[target].reference, "keyferry", *subcommand, "--help")
    assert shown.returncode == 0, shown.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_no_pip_and_no_compiler_in_the_final_images(
    runtime: Runtime, images: dict[str, Image], target: str
) -> None:
    reference = images[target].reference
    found = runtime.run(
        reference,
        "sh",
        "-c",
        "for c in pip pip3 gcc cc g++ make apt-get; do command -v $c; done; "
        "ls /opt/keyferry/bin/pip* /usr/share/python-wheels 2>/dev/null; true",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == ""
    for module in ("pip", "ensurepip", "setuptools"):
        imported = runtime.run(reference, "python3", "-c", f"import {module}")
        assert imported.returncode != 0, f"{module} is importable in {reference}"
        assert "ModuleNotFoundError" in imported.stderr


def test_the_app_image_has_real_clients(runtime: Runtime, images: dict[str, Image]) -> None:
    reference = images["app"].reference
    assert runtime.run(reference, "id", "-u").stdout.strip() == USER.split(":")[0]
    for command, expected in (
        (["psql", "--version"], "psql (PostgreSQL) 15"),
        (["openssl", "version"], "OpenSSL 3"),
        (["aws", "--version"], "aws-cli/2"),
    ):
        shown = runtime.run(reference, *command)
        assert shown.returncode == 0, shown.stderr
        assert expected in shown.stdout + shown.stderr


def test_the_app_images_clients_work_against_the_beds_servers(
    runtime: Runtime, images: dict[str, Image], postgres: PostgresServer, moto: MotoServer
) -> None:
    """Not only installed: psql logs in, aws makes a signed STS call, openssl verifies."""
    reference = images["app"].reference
    login = runtime.run(reference, "psql", postgres.dsn(), "-tAc", "select 41 + 1", host=True)
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "42"
    caller = runtime.run(
        reference,
        "aws",
        "sts",
        "get-caller-identity",
        "--endpoint-url",
        moto.endpoint,
        "--output",
        "json",
        env={
            "AWS_ACCESS_KEY_ID": moto.access_key_id,
            "AWS_SECRET_ACCESS_KEY": moto.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
        },
        host=True,
    )
    assert caller.returncode == 0, caller.stderr
    assert json.loads(caller.stdout)["Account"]
    verified = runtime.run(
        reference,
        "sh",
        "-c",
        "cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-subj /CN=e2e -keyout key.pem -out ca.pem -days 1 2>/dev/null "
        "&& openssl verify -CAfile ca.pem ca.pem",
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == "ca.pem: OK"


# Every module of keyferry's virtualenv the agent loads, whose bytecode file is not there.
UNCOMPILED = """
import os, sys
import injector.agent.cli, injector.agent.client, injector.agent.session
print(" ".join(
    name for name, module in sorted(sys.modules.items())
    if (getattr(module, "__file__", None) or "").startswith("/opt/keyferry/")
    and module.__file__.endswith(".py")
    and not os.path.exists(module.__cached__)
))
"""


def test_the_agent_image_runs_the_probe_and_ships_its_bytecode(
    runtime: Runtime, images: dict[str, Image]
) -> None:
    """The webhook's probe command runs in the agent image (no spec here: exit 2, its
    reason); and the agent's imports are compiled in (a read-only root cannot cache them)."""
    reference = images["agent"].reference
    probe = runtime.run(reference, *PROBE_COMMAND)
    assert probe.returncode == EXIT_SPEC, probe.stderr
    assert f"keyferry probe: {AGENT_SPEC_ENV} is not set" in probe.stderr
    uncompiled = runtime.run(reference, "python3", "-c", UNCOMPILED)
    assert uncompiled.returncode == 0, uncompiled.stderr
    assert uncompiled.stdout.split() == []
