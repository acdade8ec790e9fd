"""The store as the broker holds it: one engine, migrated at open, and its repositories."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from .checkpoints import CheckpointRepository
from .clock import Clock, utcnow
from .clusters import ClusterRepository
from .config import StoreSettings
from .engine import create_store_engine
from .grants import GrantRepository
from .leases import LeaseRepository
from .migrate import upgrade
from .roles import RoleRepository


class Store:
    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        sessions = sessionmaker(engine, expire_on_commit=False)
        self.leases = LeaseRepository(sessions, clock)
        self.roles = RoleRepository(sessions, clock)
        self.checkpoints = CheckpointRepository(sessions, clock)
        self.clusters = ClusterRepository(sessions, clock)
        self.grants = GrantRepository(sessions)

    @classmethod
    def open(cls, settings: StoreSettings, clock: Clock = utcnow) -> Store:
        """Connect and bring the schema to the newest revision (StoreUnavailable if not)."""
        engine = create_store_engine(settings)
        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock)

    def close(self) -> None:
        self.engine.dispose()
