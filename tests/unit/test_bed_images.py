"""The image builder's pure pieces: CRI names and the apt sources mmdebstrap is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bed import ServerUnavailable
from tests.bed.debian import apt_sources
from tests.bed.images import ShortImageName, chart_references, cri_reference


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("registry.example/keyferry/agent", "registry.example/keyferry/agent:0.1.0"),
        ("localhost/keyferry/app", "localhost/keyferry/app:0.1.0"),
        ("host:5000/keyferry/agent", "host:5000/keyferry/agent:0.1.0"),
    ],
)
def test_cri_reference_keeps_a_name_with_a_domain(repository: str, expected: str) -> None:
    assert cri_reference(repository, "0.1.0") == expected


@pytest.mark.parametrize("repository", ["keyferry/broker", "busybox"])
def test_cri_reference_refuses_a_short_name_and_says_how_to_fix_it(repository: str) -> None:
    with pytest.raises(ShortImageName, match=f"localhost/{repository}"):
        cri_reference(repository, "0.1.0")


def test_chart_references_are_what_the_chart_renders_by_default() -> None:
    assert chart_references() == {
        "broker": "localhost/keyferry/broker:0.1.0",
        "webhook": "localhost/keyferry/webhook:0.1.0",
        "agent": "localhost/keyferry/agent:0.1.0",
    }


def test_apt_sources_keep_the_suites_entries_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
        "deb http://mirror.invalid/debian bullseye main\n"
        "deb-src http://mirror.invalid/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://other.invalid/x\nSuites: nodistro\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\n"
        "Components: main\nEnabled: no\n"
    )
    (tmp_path / "sources.list.d" / "vendor.list.disabled").write_text(
        "deb http://vendor.invalid bookworm main\n"
    )
    sources = apt_sources(tmp_path)
    assert sources.one_line == "deb [signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
    assert "bookworm-updates" in sources.deb822
    assert "nodistro" not in sources.deb822
    assert "security" not in sources.deb822
    written = sources.write(tmp_path / "out")
    assert [p.name for p in written] == ["bed.list", "bed.sources"]


def test_no_source_for_the_suite_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://mirror.invalid/debian bullseye main\n")
    with pytest.raises(ServerUnavailable, match=str(tmp_path)):
        apt_sources(tmp_path)
