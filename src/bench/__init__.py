"""Benchmarks: scripts that print measured ratios (never timed unit tests).

``python -m src.bench`` (models.py: the command line) and ``python -m src.bench.core`` (core.py).
Measuring is apart from reporting: measure.py and core.py return data (dataclasses),
report.py renders it as markdown; backends.py holds one unit per inference backend; timing.py
the settings a measurement runs under, each set in a ``with`` block and restored after it.
"""
