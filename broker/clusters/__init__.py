"""Registered clusters: how the broker reaches each API server, its keys, and its pods."""

from .client import (
    ClusterAuthFailed,
    ClusterClient,
    ClusterForbidden,
    ClusterTlsFailed,
    ClusterUnavailable,
)
from .config import ClusterConfig
from .connection import ClusterConnection
from .health import ClusterHealth, WatchState
from .pods import EndedPod, PodWatch

__all__ = [
    "ClusterAuthFailed",
    "ClusterClient",
    "ClusterConfig",
    "ClusterConnection",
    "ClusterForbidden",
    "ClusterHealth",
    "ClusterTlsFailed",
    "ClusterUnavailable",
    "EndedPod",
    "PodWatch",
    "WatchState",
]
