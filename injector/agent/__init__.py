"""The in-pod agent: `keyferry agent run` fetches a pod's credentials and keeps its files fresh;
`keyferry agent check` is the startupProbe. See docs/injector.md for the contract."""
