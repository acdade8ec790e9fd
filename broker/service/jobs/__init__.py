"""What the broker does on its own, periodically: renewals (renewal.py), reconcile
(reconcile.py), rotation on a role's schedule (rotation_schedule.py), ending the leases of
pods that went away (ended_pods.py); the scheduler that runs them (scheduler.py) and the
leader lock that decides which replica runs the leader-only ones (leadership.py)."""
