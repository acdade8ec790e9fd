"""Lease events for pods' Watch streams: the per-replica hub that routes them (hub.py) and
the relay that carries them between replicas over PostgreSQL NOTIFY (relay.py)."""
