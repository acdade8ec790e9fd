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

STAGING = Path("/tmp/keyferry-e2e-interpreter")  # noqa: S108 (fixed path the pod user reads)
CHECKOUT = Path(__file__).resolve().parents[2]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _expose(paths: list[Path]) -> None:
    """The interpreter (under /root with pyenv) and the checkout with its venv (under a 0700
    CI temp folder) may live below directories other users cannot enter. Inside this
    namespace only, cover each such directory with a world-enterable tmpfs holding just the
    entries on the way to those paths, as an image would ship them readable."""
    hidden: dict[Path, set[str]] = {}
    for path in paths:
        real = Path(os.path.realpath(path))
        closed = next(
            (p for p in reversed(real.parents) if not p.stat().st_mode & stat.S_IXOTH), None
        )
        if closed is not None:
            hidden.setdefault(closed, set()).add(real.relative_to(closed).parts[0])
    for number, (closed, entries) in enumerate(hidden.items()):
        stash = STAGING / str(number)
        for entry in entries:
            (stash / entry).mkdir(parents=True, exist_ok=True)
            _mount("--bind", str(closed / entry), str(stash / entry))
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(closed))
        for entry in entries:
            (closed / entry).mkdir()
            _mount("--bind", str(stash / entry), str(closed / entry))


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    _mount("--make-rprivate", "/")
    for mount in plan["mounts"]:
        Path(mount["target"]).mkdir(parents=True, exist_ok=True)
        _mount("--bind", mount["source"], mount["target"])
        if mount["read_only"]:
            _mount("-o", "remount,bind,ro", mount["target"])
    if plan["uid"] is not None:
        _expose([Path(sys.executable), CHECKOUT])
        os.setgroups(plan["groups"])
        os.setgid(plan["gid"] if plan["gid"] is not None else plan["uid"])
        os.setuid(plan["uid"])
    os.execvpe(plan["argv"][0], plan["argv"], plan["env"])  # noqa: S606 (execs the harness's own command)


if __name__ == "__main__":
    main()
