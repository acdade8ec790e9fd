"""keyferry injector: the admission webhook and the in-pod agent."""
