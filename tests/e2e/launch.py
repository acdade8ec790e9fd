"""The container runtime's last step, run inside `unshare --mount --propagation private`:
bind the pod's volumes at the container's mount paths, drop to the container's user, and
exec its command with exactly its environment. Standard library only; one plan per process.

The plan (JSON, argv[1]): {"mounts": [{"source", "target", "read_only"}], "uid", "gid",
"groups", "argv", "env"}. Mount points that do not exist are created (empty directories on
the host, visible only as mount points inside each container's own namespace).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

STAGING = Path("/tmp/keyferry-e2e-interpreter")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _expose_interpreter() -> None:
    """The venv's interpreter may live under a directory other users cannot enter (/root):
    inside this namespace only, cover that directory with a world-enterable tmpfs holding
    just the interpreter's tree, as an image would ship it readable."""
    real = Path(os.path.realpath(sys.executable))
    closed = next((p for p in reversed(real.parents) if not p.stat().st_mode & stat.S_IXOTH), None)
    if closed is None:
        return
    keep = real.parents[len(real.relative_to(closed).parts) - 2]  # closed's child on the way
    STAGING.mkdir(exist_ok=True)
    _mount("--bind", str(keep), str(STAGING))
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(closed))
    keep.mkdir()
    _mount("--bind", str(STAGING), str(keep))


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    _mount("--make-rprivate", "/")
    for mount in plan["mounts"]:
        Path(mount["target"]).mkdir(parents=True, exist_ok=True)
        _mount("--bind", mount["source"], mount["target"])
        if mount["read_only"]:
            _mount("-o", "remount,bind,ro", mount["target"])
    if plan["uid"] is not None:
        _expose_interpreter()
        os.setgroups(plan["groups"])
        os.setgid(plan["gid"] if plan["gid"] is not None else plan["uid"])
        os.setuid(plan["uid"])
    os.execvpe(plan["argv"][0], plan["argv"], plan["env"])


if __name__ == "__main__":
    main()
