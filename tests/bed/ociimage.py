"""Tiny OCI images written by the bed itself: no registry, no daemon, no build tool.

An image here is a few static binaries (Debian's `catatonit`, `busybox-static`) in one
layer. `write_archive` produces an OCI image-layout tar (`oci-layout`, `index.json` naming
the image by `org.opencontainers.image.ref.name`, blobs), what `ctr images import` reads.
The tar is deterministic (fixed times, owners and order), so the same inputs give the same
digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerUnavailable

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class ImageSpec:
    """What goes in an image: files by path inside it (copied from the host), links, and
    how it starts."""

    files: Mapping[str, Path]
    entrypoint: Sequence[str]
    symlinks: Mapping[str, str] = field(default_factory=dict)
    directories: Sequence[str] = ()
    user: str = ""


def _blob(data: bytes) -> tuple[str, bytes]:
    return f"sha256:{hashlib.sha256(data).hexdigest()}", data


def _layer(spec: ImageSpec) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted({*spec.directories, *(_parents(spec))}):
            info = tarfile.TarInfo(directory.strip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "/tmp" else 0o755  # noqa: S108
            tar.addfile(info)
        for inside, source in sorted(spec.files.items()):
            if not source.is_file():
                raise ServerUnavailable(
                    "node image", f"{source} is missing", "apt-get install its package"
                )
            info = tarfile.TarInfo(inside.strip("/"))
            data = source.read_bytes()
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for link, target in sorted(spec.symlinks.items()):
            info = tarfile.TarInfo(link.strip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return raw.getvalue()


def _parents(spec: ImageSpec) -> set[str]:
    paths = [*spec.files, *spec.symlinks]
    return {str(parent) for p in paths for parent in Path(p).parents if str(parent) != "/"}


def write_archive(spec: ImageSpec, ref: str, dest: Path) -> Path:
    """Write `spec` as an OCI image-layout tar whose one image is named `ref`."""
    layer_tar = _layer(spec)
    diff_id = f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"
    layer_digest, layer = _blob(gzip.compress(layer_tar, compresslevel=1, mtime=0))
    config_json: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(spec.entrypoint), "User": spec.user, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "keyferry test bed (tests/bed/ociimage.py)"}],
    }
    config_digest, config = _blob(json.dumps(config_json, sort_keys=True).encode())
    manifest_digest, manifest = _blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
            },
            sort_keys=True,
        ).encode()
    )
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {REF_NAME: ref},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        **{
            f"blobs/sha256/{digest.removeprefix('sha256:')}": data
            for digest, data in ((layer_digest, layer), (config_digest, config))
        },
        f"blobs/sha256/{manifest_digest.removeprefix('sha256:')}": manifest,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest
