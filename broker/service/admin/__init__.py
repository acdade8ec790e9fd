"""The operators' flows, behind the admin listener: the role catalog (roles.py), member
clusters (clusters.py, checked by cluster_checks.py), just-in-time access grants
(access_grants.py), rotation of leases (rotation.py) and revocation by selector
(revoke_selected.py, both selecting through selection.py), and the root credential of a
database connection (root_credential.py)."""
