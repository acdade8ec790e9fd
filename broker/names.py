"""Names the broker and the in-pod agent share, in a module that imports nothing.

The agent's spec (injector/contract.py) checks role names with the broker's own pattern;
taking it from `broker.models` would load the whole role catalog (its YAML loader, the
scheduler's cron triggers) into every injected pod's agent at start.
"""

ROLE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
