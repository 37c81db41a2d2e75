"""Benchmarks: scripts that print measured ratios (never timed unit tests).

``python -m src.bench`` (models.py: the command line), ``python -m src.bench.core`` (core.py) and
``python -m src.bench.core_api`` (core_api.py: the core API alone against the deploy package
imported, in child processes that import only what they measure).
Measuring is apart from reporting: measure.py and core.py return data (dataclasses),
report.py renders it as markdown; backends.py holds one unit per inference backend; timing.py
the settings a measurement runs under, each set in a ``with`` block and restored after it.
"""
