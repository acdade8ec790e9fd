"""The bed scene every test package shares: fixtures and helpers, never tests.

Test modules import from here (and from tests.bed), never from one another. The fixtures
(fixtures.py) are registered for every test by tests/conftest.py; the rest are imported:

- broker.py: the in-process broker's config, `Broker`, `start_broker`, `issue`, `log_in`
- leases.py: a Watch `Agent`, `rotate`, `state_of`, `works` (is a login accepted)
- clocks.py: `ShiftedClock`, `ManualClock` (the broker's now, moved by the test)
- polling.py: `until` (async probe) and `until_true` (plain probe), the bounded polls
- admin_helpers.py, workloads.py: the admin listener (operators' mutual TLS) and the
  workload side (pod-bound tokens, the broker stub, error details)
- engines.py, stores.py: Vault engines and AppRoles; SQLite and PostgreSQL stores
- kube_helpers.py, member_clusters.py, webhook_probe.py: the bed's Kubernetes API servers
- replicas.py: broker replicas as processes on one PostgreSQL store
"""
