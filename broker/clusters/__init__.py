"""Registered clusters: how the broker reaches each API server, its keys, and its pods."""

from .client import ClusterClient, ClusterUnavailable
from .config import ClusterConfig

__all__ = ["ClusterClient", "ClusterConfig", "ClusterUnavailable"]
