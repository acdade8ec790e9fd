"""The lease engine: the one place a tracked lease is begun, issued, replayed, undone and
ended (lease_engine.py), and the Revoker that revokes at Vault, settles the row and
retries what Vault did not take (revoker.py). Flows create and end leases only through it
(tests/unit/test_lease_engine_contract.py)."""
