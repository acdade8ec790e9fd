"""The `keyferry` command's exit codes, the same for every subcommand."""

OK = 0
FAILED = 1  # the broker refused the request or could not start, or some leases failed
CONFIG = 2  # a file or an option is invalid: fix it and run again
UNREACHABLE = 3  # the broker did not answer: is it running, is the context's address right?
NOTHING_SELECTED = 4  # rotate/revoke: the selector matched no lease; nothing was changed
