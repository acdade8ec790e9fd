"""The `keyferry` command line."""
