"""Fixtures shared by the unit tests: the in-memory lease store, fake backend and Core of
lease_bench.py (`clock`, `store`, `bench`)."""

from tests.unit.lease_bench import bench, clock, store

__all__ = ["bench", "clock", "store"]
