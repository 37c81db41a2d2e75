"""Resumable benchmarks: every unit of measurement is stored as soon as it is measured.

A full ``python -m src.bench`` takes hours on a 2-core CPU, longer than a working session, and a
killed process loses what it measured. So each unit (one model at one batch on every backend, an
extra allocator row set, a layer / training / profile section) is written to
``runs/bench/<commit>/<kind>_<hash>.json`` (``--cache-dir``) the moment it is done, keyed by every
setting that changes its figures (model, batch, backends, variants, repetitions, plan settings,
threads, allocator setting and preloaded library, machine). Run the same command again on the same
clean commit and machine and the stored units are loaded instead of measured: the report is the
same as one uninterrupted run's, with a line saying how many units were loaded and when they were
measured. Nothing is cached from a dirty tree (its code is not a commit), and ``--no-cache``
measures everything afresh.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from src import provenance

__all__ = ["UnitCache", "DEFAULT_DIR", "environment_key"]

DEFAULT_DIR = "runs/bench"


def environment_key() -> dict[str, str]:
    """The process settings that change timings without being arguments (an allocator set by
    environment or preloaded)."""
    return {k: os.environ.get(k, "") for k in ("LD_PRELOAD", "GLIBC_TUNABLES", "OMP_NUM_THREADS")}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class UnitCache:
    """Stored measurement units of one commit (`root` = <dir>/<sha>); `root=None` stores nothing."""

    def __init__(self, root: Path | None):
        self.root = root
        self.loaded = 0
        self.measured = 0
        self.times: list[str] = []  # when each unit used by this report was measured

    @classmethod
    def for_commit(cls, directory: str | Path | None) -> "UnitCache":
        """The cache of HEAD's commit under `directory` (relative: to the repository root); none
        when `directory` is None, outside a git checkout or with uncommitted changes."""
        sha = provenance.git_sha()
        if directory is None or sha == "unknown" or sha.endswith("-dirty"):
            return cls(None)
        root = Path(directory)
        if not root.is_absolute():
            root = provenance.REPO_ROOT / root
        return cls(root / sha)

    def path(self, kind: str, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.root / f"{kind}_{digest}.json"

    def get(self, kind: str, key: dict, compute: Callable[[], str | None]) -> str | None:
        """The stored value of unit (`kind`, `key`), else `compute()`'s, stored unless None (a
        failure is measured again next time)."""
        if self.root is None:
            value = compute()
            self.times.append(_now())
            return value
        p = self.path(kind, key)
        if p.exists():
            try:
                stored = json.loads(p.read_text())
                if stored.get("key") == json.loads(json.dumps(key, default=str)):
                    self.loaded += 1
                    self.times.append(stored.get("when", "?"))
                    return stored["value"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable (e.g. cut off): measured again and rewritten
        value = compute()
        when = _now()
        self.times.append(when)
        if value is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "when": when, "value": value}, default=str, indent=1))
            tmp.replace(p)  # atomic: a killed process leaves no half-written unit
            self.measured += 1
        return value

    def summary(self) -> str:
        """One sentence for the report header when units were loaded ("" otherwise)."""
        if not self.loaded:
            return ""
        times = sorted(t for t in self.times if t != "?")
        span = f", measured between {times[0]} and {times[-1]}" if times else ""
        return (f"Resumed: {self.loaded} of {self.loaded + self.measured} measurement units were loaded from "
                f"`{_shown(self.root)}` (stored by earlier processes of this command at this commit, with the same "
                f"settings, on this machine{span}); the load averages are this last process's.")


def _shown(root: Path) -> str:
    try:
        return str(root.relative_to(provenance.REPO_ROOT))
    except ValueError:
        return str(root)
