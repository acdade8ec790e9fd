"""charts/images/Dockerfile, checked structurally, in seconds and with no container engine.

The bed builds the images with buildah on its Debian base and runs them
(tests/integration/test_images.py, as root); this lint keeps what would rot without a
build in front of every run: an unpinned base, a final stage running as root or carrying
pip or a compiler, a step that works only on the official image (`python`, its paths), an
install that drifts from CI's (`pip install -c tests/constraints.txt`), a COPY of a file
that moved, a command the CLI no longer has, a chart default that no longer matches the
image (repository names, the numeric UID), or base arguments the bed does not pass.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.bed.images import BASE_DIGEST_ARG, BASE_IMAGE_ARG, USER

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "charts" / "images" / "Dockerfile"
DOCKERIGNORE = REPO / "charts" / "images" / "Dockerfile.dockerignore"
VALUES = REPO / "charts" / "keyferry" / "values.yaml"
TARGETS = ("broker", "webhook", "agent")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apt|apk|pip install|python3?-dev)\b"
)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and every stage it is built FROM, nearest first."""
        chain = [self.stages[name]]
        while chain[-1].base in self.stages:
            chain.append(self.stages[chain[-1].base])
        return chain


def parse(path: Path) -> Dockerfile:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the file ends in a continuation line"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3, f"name every stage: FROM <image> AS <name> ({line})"
            assert words[1].upper() == "AS", line
            current = Stage(words[2], words[0])
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM ({line})"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((keyword, rest))
    return Dockerfile(args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


def test_every_external_base_is_pinned_by_a_digest_argument(dockerfile: Dockerfile) -> None:
    external = [s for s in dockerfile.stages.values() if s.base not in dockerfile.stages]
    assert external
    for stage in external:
        match = re.fullmatch(r"\$\{(\w+)\}@\$\{(\w+)\}", stage.base)
        assert match, f"stage {stage.name}: FROM ${{IMAGE}}@${{DIGEST}}, not {stage.base}"
        image, digest = match.groups()
        assert dockerfile.args.get(image), f"ARG {image} needs a default"
        assert DIGEST.match(dockerfile.args.get(digest, "")), (
            f"ARG {digest} must be sha256:<64 hex>"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_final_stages_run_as_a_numeric_non_root_user(dockerfile: Dockerfile, target: str) -> None:
    users = dockerfile.stages[target].all("USER")
    assert users, f"stage {target} sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"stage {target}: USER must be numeric (runAsNonRoot checks a UID)"
    assert int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)


@pytest.mark.parametrize("target", TARGETS)
def test_final_stages_carry_no_build_tools(dockerfile: Dockerfile, target: str) -> None:
    chain = dockerfile.chain(target)
    for stage in chain:
        for command in stage.all("RUN"):
            assert not BUILD_TOOLS.search(command), f"stage {stage.name}: {command}"
        for source in stage.all("COPY"):
            origin = re.match(r"--from=(\S+)", source)
            assert origin, f"stage {stage.name} copies from the build context: {source}"
            assert origin.group(1) not in {s.name for s in chain}
            assert origin.group(1) in dockerfile.stages
    removed = " ".join(run for stage in chain for run in stage.all("RUN"))
    assert "pip uninstall -y pip setuptools" in removed, "pip stays in the final image"
    assert "python3 -m venv" in " ".join(dockerfile.stages["build"].all("RUN"))
    copied = " ".join(src for stage in chain for src in stage.all("COPY"))
    assert "--from=build /opt/keyferry /opt/keyferry" in copied


def test_the_build_installs_like_ci(dockerfile: Dockerfile) -> None:
    build = dockerfile.stages["build"]
    install = " ".join(build.all("RUN"))
    assert "pip install -c tests/constraints.txt" in install
    assert (
        "pip install --disable-pip-version-check -c tests/constraints.txt"
        in (REPO / "tests" / "run").read_text()
    )
    extras = set(re.findall(r'"\.\[([\w,-]+)\]"', install)[0].split(","))
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras <= set(optional)
    assert "pip uninstall -y pip setuptools" in install
    ignored = DOCKERIGNORE.read_text().splitlines()
    for copy in build.all("COPY"):
        *sources, _dest = shlex.split(copy)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
            assert f"!{source}" in ignored or f"!{source}/**" in ignored, (
                f"{source} is excluded from the build context by {DOCKERIGNORE.name}"
            )


@pytest.mark.parametrize("target", TARGETS)
def test_commands_exist_in_the_cli(dockerfile: Dockerfile, target: str) -> None:
    stage = dockerfile.stages[target]
    (entrypoint,) = stage.all("ENTRYPOINT")
    (cmd,) = stage.all("CMD")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    program = yaml.safe_load(entrypoint)
    assert program == ["keyferry"]
    assert program[0] in scripts
    words = yaml.safe_load(cmd)
    subcommand = words[: words.index("--config")] if "--config" in words else words
    keyferry = Path(sys.executable).parent / "keyferry"
    shown = subprocess.run(
        [str(keyferry), *subcommand, "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    if "--config" in words:
        assert "--config" in shown.stdout


def test_chart_defaults_match_the_images(dockerfile: Dockerfile) -> None:
    values = yaml.safe_load(VALUES.read_text())
    for target in TARGETS:
        assert values["images"][target]["repository"] == f"localhost/keyferry/{target}"
    uid = int(dockerfile.stages["broker"].all("USER")[-1].split(":")[0])
    assert values["broker"]["runAsUser"] == uid
    assert values["webhook"]["runAsUser"] == uid
    assert values["webhook"]["agent"]["runAsUser"] == uid


def test_the_bed_passes_the_dockerfiles_base_arguments(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages.values():
        if stage.base not in dockerfile.stages:
            assert stage.base == f"${{{BASE_IMAGE_ARG}}}@${{{BASE_DIGEST_ARG}}}"
    assert dockerfile.stages["broker"].all("USER")[-1] == USER


def test_steps_work_on_a_debian_base_as_on_the_official_one(dockerfile: Dockerfile) -> None:
    """Debian's python3.11 has no `python` command, lives under /usr (not /usr/local), ships no
    pip in the interpreter and marks it externally managed: a step may not assume otherwise."""
    runs = [run for stage in dockerfile.stages.values() for run in stage.all("RUN")]
    for run in runs:
        assert not re.search(r"(^|[\s;&|])python\s", run), f"no `python` on Debian: {run}"
        assert "/usr/local/lib/python" not in run, f"a path of the official image only: {run}"
    (runtime,) = dockerfile.stages["runtime"].all("RUN")
    uninstall = runtime.index("python3 -m pip uninstall")
    assert "if python3 -m pip --version" in runtime[:uninstall], "pip is uninstalled unguarded"
    assert "ensurepip" in runtime
    assert "/usr/share/python-wheels" in runtime
    assert runtime.rstrip().endswith("! python3 -m pip --version 2>/dev/null")
