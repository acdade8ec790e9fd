"""Generated gRPC code; regenerate with `python -m tests.tools.protogen`, never edit by hand."""
