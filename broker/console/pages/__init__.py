"""The console's pages, one module each: overview, leases (search, rotate and revoke, the
progress of a run), grants (the access inbox) and audit (the trail and its verification)."""
