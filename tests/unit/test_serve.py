"""`keyferry broker serve` as a process: it starts, says where it listens, and stops
gracefully on SIGTERM with exit code 0."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from broker.identity.admin_pki import create_ca

DOCS = Path(__file__).parents[2] / "docs" / "examples"
KEYFERRY = [sys.executable, "-c", "from broker.cli.main import main; main()"]


def test_serve_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    config = {
        "data_dir": str(tmp_path / "data"),
        "vault": {"addr": "http://127.0.0.1:1", "token": "unused-until-a-call"},
        "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
        "audit": {"log": str(tmp_path / "audit.jsonl"), "hmac_key": "h" * 32},
        "sealing": {"key": base64.b64encode(os.urandom(32)).decode()},
        "policies": [str(DOCS / "policies.cedar")],
        "roles": str(DOCS / "roles.yaml"),
        "workload": {"host": "127.0.0.1", "port": 0},
        "metrics": {"port": None},
        "admin": admin_files(tmp_path / "admin-ca"),
    }
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [*KEYFERRY, "broker", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "admin listener on port" in line:
            break
    else:
        raise AssertionError("the broker never said it was serving:\n" + "".join(lines))
    text = "".join(lines)
    assert "workload listener on port" in text
    assert f"self-signed TLS identity at {tmp_path / 'data'}" in text
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, text + rest
    events = [json.loads(line)["event"] for line in (text + rest).splitlines() if line[:1] == "{"]
    assert "broker serving" in events
    assert events[-1] == "broker stopped"


def admin_files(folder: Path) -> dict[str, object]:
    ca = create_ca(folder)
    server = ca.issue_server(["localhost", "127.0.0.1"])
    return {
        "host": "127.0.0.1",
        "port": 0,
        "tls_cert": str(server.cert_path),
        "tls_key": str(server.key_path),
        "client_ca": str(ca.cert_path),
    }
