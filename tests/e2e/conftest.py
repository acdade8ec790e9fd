"""Fixtures of the end-to-end tests on cluster a's real node (tests/scene/node_scene.py)."""

from tests.scene.node_scene import images, scene

__all__ = ["images", "scene"]
