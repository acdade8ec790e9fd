"""Tests are easy to find: shared fixtures and helpers live in tests/scene, and no module
imports a test module (`test_*.py`), which would make a test file a fixture library."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parents[1]


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
            names.extend(f"{node.module or ''}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_no_module_imports_a_test_module() -> None:
    offenders = sorted(
        f"{path.relative_to(TESTS.parent)} imports {name}"
        for path in TESTS.rglob("*.py")
        for name in _imported_modules(path)
        if any(part.startswith("test_") for part in name.split("."))
    )
    assert offenders == []


def test_the_scene_holds_no_tests() -> None:
    assert sorted(p.name for p in (TESTS / "scene").glob("test_*.py")) == []
