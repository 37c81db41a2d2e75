"""Benchmarks: scripts that print measured ratios (never timed unit tests)."""
