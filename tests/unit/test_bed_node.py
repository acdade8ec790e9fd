"""The reasons a node cannot start (KEYFERRY_BED_REQUIRED=1 fails with this reason); the
bed's OCI archives are tested in test_bed_ociimage.py."""

import os
import shutil
from pathlib import Path

import pytest

from tests.bed import containerd
from tests.bed.errors import ServerUnavailable
from tests.bed.node import start_node
from tests.bed.workspace import Workspace


def test_a_missing_cni_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("containerd", "runc", "iptables")):
        pytest.skip("the runtime check looks at the CNI plugins only as root with containerd")
    monkeypatch.setattr(containerd, "CNI_BIN_DIR", tmp_path)
    with pytest.raises(ServerUnavailable, match=f"the CNI plugin {tmp_path}/bridge is missing"):
        containerd.require_runtime()


def test_a_cluster_without_node_network_has_no_node(tmp_path: Path) -> None:
    with pytest.raises(ServerUnavailable, match="cluster a runs without a node network"):
        start_node(Workspace(tmp_path), cluster=None)
