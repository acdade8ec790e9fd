"""Regenerate the Python gRPC code under broker/api from the .proto files under proto/.

    python -m tests.tools.protogen          # write the generated files
    python -m tests.tools.protogen --check  # fail when the committed files differ (CI)

Each .proto's path under proto/ mirrors the package its code lands in, so the generated
imports (`from broker.api.v1 import ...`) resolve without hand edits.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
OUTPUT = ROOT / "broker" / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(into: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = str(files("grpc_tools") / "_proto")
    # protoc finds the mypy plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={into}",
            f"--grpc_python_out={into}",
            f"--mypy_out={into}",
            f"--mypy_grpc_out={into}",
            *sources,
        ]
    )
    if code != 0:
        sys.exit(f"protoc failed with exit code {code}")
    for folder in {p.parent for p in into.rglob("*_pb2.py")} | {
        into / "broker",
        into / "broker" / "api",
    }:
        (folder / "__init__.py").touch()


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = out / "broker" / "api"
        new, old = generated_files(fresh), generated_files(OUTPUT)
        stale = sorted(
            str(p)
            for p in new | old
            if p not in new or p not in old or not filecmp.cmp(fresh / p, OUTPUT / p, shallow=False)
        )
        if args.check:
            if stale:
                sys.exit(
                    "generated code is stale; run `python -m tests.tools.protogen` and commit:\n  "
                    + "\n  ".join(stale)
                )
            print(f"generated code is up to date ({len(new)} files)")
            return
        for rel in old - new:
            (OUTPUT / rel).unlink()
        for rel in new:
            (OUTPUT / rel).parent.mkdir(parents=True, exist_ok=True)
            (OUTPUT / rel.parent / "__init__.py").touch()
            shutil.copyfile(fresh / rel, OUTPUT / rel)
        print(
            f"wrote {len(new)} generated files under {OUTPUT.relative_to(ROOT)}",
            f"({len(stale)} changed)",
        )


if __name__ == "__main__":
    main()
