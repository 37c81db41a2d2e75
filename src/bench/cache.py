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

``--reuse-commit SHA`` also loads the model units that a run at an earlier commit (an ancestor of
HEAD) stored without a failure, with the same settings on the same machine; units that failed
there are measured at HEAD. It is for a fix that touches only what failed: the report header names
the earlier commit, the units taken from it and the source files changed since, so a reader can
judge. Other units (allocator row sets, sections) are always measured at HEAD.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from src import provenance

__all__ = ["UnitCache", "ReuseError", "DEFAULT_DIR", "environment_key"]

DEFAULT_DIR = "runs/bench"


def environment_key() -> dict[str, str]:
    """The process settings that change timings without being arguments (an allocator set by
    environment or preloaded)."""
    return {k: os.environ.get(k, "") for k in ("LD_PRELOAD", "GLIBC_TUNABLES", "OMP_NUM_THREADS")}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class ReuseError(ValueError):
    """--reuse-commit names no usable earlier commit."""


class UnitCache:
    """Stored measurement units of one commit (`root` = <dir>/<sha>); `root=None` stores nothing.
    `reuse` = <dir>/<earlier sha>: units stored there are loaded where :meth:`get` allows it."""

    def __init__(self, root: Path | None, reuse: Path | None = None):
        self.root = root
        self.reuse = reuse
        self.loaded = 0
        self.measured = 0
        self.reused: list[str] = []  # labels of the units loaded from `reuse`
        self.times: list[str] = []  # when each unit used by this report was measured

    @classmethod
    def for_commit(cls, directory: str | Path | None, reuse_commit: str | None = None) -> "UnitCache":
        """The cache of HEAD's commit under `directory` (relative: to the repository root); none
        when `directory` is None, outside a git checkout or with uncommitted changes. With
        `reuse_commit`, also the units stored by that earlier commit (ReuseError if it is not an
        ancestor of HEAD or stored nothing there)."""
        sha = provenance.git_sha()
        if directory is None or sha == "unknown" or sha.endswith("-dirty"):
            if reuse_commit:
                raise ReuseError("--reuse-commit needs the unit cache: a clean checkout and --out in results/ "
                                 "(or --cache-dir DIR)")
            return cls(None)
        root = Path(directory)
        if not root.is_absolute():
            root = provenance.REPO_ROOT / root
        reuse = None
        if reuse_commit:
            full = provenance._git("rev-parse", "--verify", "--quiet", f"{reuse_commit}^{{commit}}")
            if not full:
                raise ReuseError(f"--reuse-commit {reuse_commit}: not a commit of this repository")
            if full == sha:
                raise ReuseError(f"--reuse-commit {reuse_commit}: that is HEAD itself (its units load anyway)")
            if provenance._git("merge-base", "--is-ancestor", full, sha) is None:
                raise ReuseError(f"--reuse-commit {reuse_commit}: not an ancestor of HEAD ({sha[:7]})")
            reuse = root / full
            if not reuse.is_dir() or not any(reuse.glob("*.json")):
                raise ReuseError(f"--reuse-commit {reuse_commit}: no stored units in {_shown(reuse)}")
        return cls(root / sha, reuse)

    def path(self, kind: str, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.root / f"{kind}_{digest}.json"

    @staticmethod
    def _load(p: Path, key: dict) -> dict | None:
        if p.exists():
            try:
                stored = json.loads(p.read_text())
                if stored.get("key") == json.loads(json.dumps(key, default=str)) and "value" in stored:
                    return stored
            except (OSError, ValueError, AttributeError):
                pass  # unreadable (e.g. cut off): measured again and rewritten
        return None

    def get(self, kind: str, key: dict, compute: Callable[[], str | None],
            reusable: Callable[[str], bool] | None = None, label: str = "") -> str | None:
        """The stored value of unit (`kind`, `key`), else `compute()`'s, stored unless None (a
        failure is measured again next time). With `reusable`, a unit stored by the earlier
        commit (``reuse``) whose value it accepts is loaded too (`label` names it in the report)."""
        if self.root is None:
            value = compute()
            self.times.append(_now())
            return value
        p = self.path(kind, key)
        stored = self._load(p, key)
        if stored is None and self.reuse is not None and reusable is not None:
            stored = self._load(self.reuse / p.name, key)
            if stored is not None and reusable(stored["value"]):
                self.reused.append(label or kind)
            else:
                stored = None
        if stored is not None:
            self.loaded += 1
            self.times.append(stored.get("when", "?"))
            return stored["value"]
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
        text = (f"Resumed: {self.loaded} of {self.loaded + self.measured} measurement units were loaded from "
                f"`{_shown(self.root)}` (stored by earlier processes of this command at this commit, with the same "
                f"settings, on this machine{span}); the load averages are this last process's.")
        if self.reused:
            old = self.reuse.name
            changed = provenance._git("diff", "--name-only", old, "HEAD", "--", "src") or ""
            files = ", ".join(f"`{f}`" for f in changed.split()) or "none"
            text += (f" Of these, {len(self.reused)} ({', '.join(self.reused)}) were measured at the earlier commit "
                     f"{old[:7]} (`--reuse-commit`: its units without a failure); source files changed since then "
                     f"under src/: {files}.")
        return text


def _shown(root: Path) -> str:
    try:
        return str(root.relative_to(provenance.REPO_ROOT))
    except ValueError:
        return str(root)
