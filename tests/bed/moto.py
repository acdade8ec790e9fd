"""A moto server for the AWS IAM and STS APIs, in its own virtualenv, with key checking on.

moto accepts any access key unless INITIAL_NO_AUTH_ACTION_COUNT is set; then it checks
keys and IAM policies after that many calls. The bed spends exactly those calls
creating an administrator whose keys it hands to Vault, so from then on a made-up or
revoked key really fails.

With a node network (nodenet.py) moto listens on the bridge's address instead of 127.0.0.1
(moto_server binds one address): the node's pods call STS there, and so does everything
on the host, through `endpoint`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

from .errors import ServerUnavailable
from .gobuild import _locked, cache_root
from .nodenet import NodeNetwork
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .progress import say
from .readiness import Runner
from .workspace import Workspace

REQUIREMENTS = Path(__file__).parent / "moto-requirements.txt"
REGION = "us-east-1"
ADMIN_USER = "keyferry-bed-admin"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
SETUP_CALLS = 3  # CreateUser, PutUserPolicy, CreateAccessKey
# moto_server's environment in both providers: key checking on after the SETUP_CALLS.
SERVER_ENV = {
    "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS),
    "MOTO_ALLOW_NONEXISTENT_REGION": "false",
}


@dataclass
class MotoServer:
    port: int
    access_key_id: str
    secret_access_key: str
    process: Runner  # a local process or a container (see readiness.py)
    host: str = LOOPBACK

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str, key_id: str | None = None, secret: str | None = None) -> object:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id or self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2) as resp:  # noqa: S310 (loopback http)
            return bool(resp.status == 200)

    def describe(self) -> str:
        return f"{self.endpoint} (moto IAM+STS, key checking on; admin key {self.access_key_id})"

    def stop(self) -> None:
        self.process.stop()


def moto_venv() -> Path:
    """The cached virtualenv holding moto_server, created on first use."""
    spec = REQUIREMENTS.read_bytes()
    key = hashlib.sha256(spec + sys.version.encode()).hexdigest()[:16]
    venv = cache_root() / "venvs" / f"moto-{key}"
    server = venv / "bin" / "moto_server"
    if server.exists():
        return venv
    with _locked(cache_root() / "venvs" / ".moto.lock"):
        if server.exists():
            return venv
        say(f"installing moto into its own virtualenv {venv}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
            ]
            subprocess.run([*pip, "--upgrade", "pip"], check=True)
            subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        except subprocess.CalledProcessError as exc:
            raise ServerUnavailable(
                "moto",
                f"pip failed: {exc}",
                f"check network access to the Python package index; remove {venv} and retry",
            ) from exc
    return venv


def start_moto(ws: Workspace, network: NodeNetwork | None = None, name: str = "moto") -> MotoServer:
    venv = moto_venv()
    port = free_port()
    host = network.address if network else LOOPBACK
    process = ManagedProcess(
        name,
        [str(venv / "bin" / "moto_server"), "-H", host, "-p", str(port)],
        ws.log(name),
        env={
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(ws.folder(name)),
            **SERVER_ENV,
        },
    )
    server = MotoServer(port, "", "", process, host)
    process.start()
    process.wait_until(server.healthy, "answering HTTP")
    server.access_key_id, server.secret_access_key = bootstrap_moto_admin(server.endpoint)
    return server


def bootstrap_moto_admin(endpoint: str) -> tuple[str, str]:
    """Spend the SETUP_CALLS unchecked calls on an admin user; return its key id and secret."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(
        UserName=ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps(ADMIN_POLICY)
    )
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])
