"""The in-pod agent: `keyferry agent run` fetches a pod's credentials and keeps its files fresh;
`keyferry agent check` runs the probes' check (`injector.probe`). See docs/injector.md."""
