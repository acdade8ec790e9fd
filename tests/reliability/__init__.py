"""Reliability cases of issue 10 on the bed: faults, each ending by counting leases."""
