"""What every flow shares: who is calling (callers.py), Cedar asked and recorded in one
step (gate.py, with the lease's Cedar resource in lease_resource.py), the broker's side of
the audit trail (audit_trail.py, with the refusal tally of refusals.py), the role catalog
(role_catalog.py), credential sealing (sealing.py), what a grant is as data
(grant_terms.py) and what the flows return to the server (results.py)."""
