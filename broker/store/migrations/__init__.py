"""Alembic scripts of the lease store; applied by broker.store.migrate.upgrade."""
