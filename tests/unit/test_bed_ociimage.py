"""The bed's own OCI archives (tests/bed/ociimage.py): what `ctr images import` reads."""

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.bed.errors import ServerUnavailable
from tests.bed.ociimage import REF_NAME, ImageSpec, write_archive


@pytest.fixture
def spec(tmp_path: Path) -> ImageSpec:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    return ImageSpec(
        files={"/bin/tool": binary},
        symlinks={"/bin/sh": "tool"},
        directories=("/tmp",),  # noqa: S108 - a folder inside the image
        entrypoint=["/bin/tool", "-P"],
        user="1001",
    )


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_the_archive_is_an_oci_layout_naming_the_image(spec: ImageSpec, tmp_path: Path) -> None:
    members = _members(write_archive(spec, "keyferry.invalid/tool:1", tmp_path / "a.tar"))
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads(members["index.json"])["manifests"]
    assert entry["annotations"][REF_NAME] == "keyferry.invalid/tool:1"
    manifest_blob = members[f"blobs/sha256/{entry['digest'][7:]}"]
    assert entry["digest"] == f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}"
    manifest = json.loads(manifest_blob)
    config = json.loads(members[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["config"]["Entrypoint"] == ["/bin/tool", "-P"]
    assert config["config"]["User"] == "1001"
    layer = members[f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}"]
    raw = gzip.decompress(layer)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(raw).hexdigest()}"]
    with tarfile.open(fileobj=io.BytesIO(raw)) as files:
        tool = files.getmember("bin/tool")
        assert tool.mode == 0o755
        assert files.extractfile(tool).read() == b"\x7fELF not really"  # type: ignore[union-attr]
        assert files.getmember("bin/sh").linkname == "tool"
        assert files.getmember("tmp").mode == 0o1777


def test_the_same_inputs_give_the_same_bytes(spec: ImageSpec, tmp_path: Path) -> None:
    first = write_archive(spec, "keyferry.invalid/tool:1", tmp_path / "1.tar").read_bytes()
    second = write_archive(spec, "keyferry.invalid/tool:1", tmp_path / "2.tar").read_bytes()
    assert first == second


def test_a_missing_binary_says_which(tmp_path: Path) -> None:
    spec = ImageSpec(files={"/catatonit": tmp_path / "absent"}, entrypoint=["/catatonit"])
    with pytest.raises(ServerUnavailable, match="absent is missing"):
        write_archive(spec, "keyferry.invalid/pause:x", tmp_path / "p.tar")
