"""Fixtures of the attack scene (tests/security/scene.py), by name."""

from .scene import approle, broker, exposure, leases, orders_db, root, transit

__all__ = ["approle", "broker", "exposure", "leases", "orders_db", "root", "transit"]
