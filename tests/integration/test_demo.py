"""The README's main job runs end to end on this machine's real servers and says so (as root,
like the e2e tests): cluster a's pod on the real node, cluster b's on the kubelet harness."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bed import Bed

pytestmark = pytest.mark.bed
REQUIRED = os.environ.get("KEYFERRY_BED_REQUIRED") == "1"


def _keyferry() -> str:
    keyferry = shutil.which("keyferry", path=str(Path(sys.executable).parent))
    if keyferry is None:
        pytest.fail("the keyferry console script is not installed in this environment")
    return keyferry


def test_keyferry_demo_runs_the_main_job_to_its_success_line(tmp_path: Path, bed: Bed) -> None:
    # The demo's own bed starts cluster a's node: one runs per machine, so this session's
    # node (if a test started it) is stopped first; a later module starts it again.
    bed.release_node()
    result = subprocess.run(
        [_keyferry(), "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,  # the node, its CoreDNS and the images' import included
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    demo = [line for line in out.splitlines() if line.startswith("[demo]")]
    assert demo[-1].startswith("[demo] demo: SUCCESS: ")
    for cluster in ("a", "b"):
        assert f"pod orders/orders-app-{cluster} on cluster {cluster}: created, mutated" in out
        assert re.search(rf"app container of orders-app-{cluster} \(uid 1001\) queried", out)
    for cluster in ("a", "b"):
        assert f"cluster {cluster} registered" in out
    assert "role orders-db-ro applied (database)" in out
    assert "role orders-aws applied (aws)" in out
    for cluster in ("a", "b"):
        arn = re.search(
            rf"orders-app-{cluster} called STS GetCallerIdentity at moto with the keys of "
            r"/keyferry/secrets/aws: (arn:aws:iam::\d+:user/\S+)",
            out,
        )
        assert arn is not None, f"pod {cluster} proved no AWS identity"
    assert re.search(r"old AWS keys refused: \S+: InvalidClientTokenId", out)
    (old, new) = re.findall(r"rotation: database user (\S+) -> (\S+)", out)[0]
    assert old != new
    assert re.search(r"rotated: new lease \S+ \(generation 2\)", out)
    assert f"old login refused: {old}: " in out
    assert len(re.findall(r"lease \S+ of orders-app-b: revoked", out)) == 2  # db and aws
    assert "result:               OK, the chain and its checkpoints verify" in out
    if REQUIRED:  # the node can run here (CI, tests/run test): cluster a's pod is a real one
        assert "cluster a: a real pod, scheduled on node-a and run by its kubelet" in out
        assert re.search(r"the kubelet started the agent image localhost/keyferry/agent:\S+", out)
        assert "$ kubectl delete pod orders-app-a -n orders" in out
        assert len(re.findall(r"lease \S+ of orders-app-a: revoked", out)) == 3  # + rotated
    assert "cluster b: no node here, so the kubelet harness runs the injected agent" in out
    assert "password='********'" in out
    assert not re.search(r"password='(?!\*{8}')", out), "a password printed unmasked"
    assert "aws_secret_access_key = ********" in out
    assert not re.search(r"aws_secret_access_key = (?!\*{8}$)", out, re.MULTILINE)
