"""keyferry's benchmarks (issue 9): `python -m tests.bench` or `tests/run bench`.

Not part of the test suite: nothing here is collected by pytest. Every figure is a pair
measured in the same run on the same bed servers; see docs/benchmarks.md.
"""
