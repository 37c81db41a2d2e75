"""Where a result came from: the code's git commit, and the rule that committed results come from
committed code.

`git_sha()` is recorded in every run summary and report header; `-dirty` marks a tree with
uncommitted changes to tracked files. `check_results_dir(out, allow_dirty)` refuses to write into
the repository's ``results/`` folder from such a tree (a table there must be regenerable from a
commit); ``--allow-dirty`` on the command lines says otherwise on purpose.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["REPO_ROOT", "git_sha", "is_dirty", "check_results_dir", "DirtyTreeError"]

REPO_ROOT = Path(__file__).resolve().parents[1]


class DirtyTreeError(RuntimeError):
    """Results would be written into results/ from uncommitted code."""


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def is_dirty() -> bool:
    """True when tracked files differ from HEAD (untracked files do not count)."""
    return bool(_git("status", "--porcelain", "--untracked-files=no"))


def git_sha() -> str:
    """HEAD's sha, with ``-dirty`` when tracked files have uncommitted changes; ``unknown``
    outside a git checkout (an installed package)."""
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return "unknown"
    return sha + ("-dirty" if is_dirty() else "")


def in_results_dir(out: str | Path) -> bool:
    """Whether `out` is this repository's ``results/`` or lies inside it."""
    results = (REPO_ROOT / "results").resolve()
    target = Path(out).resolve()
    return target == results or results in target.parents


def check_results_dir(out: str | Path, allow_dirty: bool = False) -> None:
    """Raise DirtyTreeError if `out` lies inside this repository's ``results/`` and the tree is
    dirty (unless `allow_dirty`)."""
    if allow_dirty or not in_results_dir(out):
        return
    target = Path(out).resolve()
    sha = git_sha()
    if sha.endswith("-dirty"):
        raise DirtyTreeError(
            f"refusing to write into {target}: the code has uncommitted changes ({sha}), and results/ "
            f"holds only what a commit can regenerate. Commit first, write elsewhere, or pass "
            f"--allow-dirty.")
