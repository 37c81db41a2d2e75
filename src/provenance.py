"""Where a result came from: the code's git commit, and the rule that committed results come from
committed code.

`git_sha()` is recorded in every run summary and report header; `-dirty` marks a tree with
uncommitted changes to tracked files. `check_results_dir(out, allow_dirty)` refuses to write into
the repository's ``results/`` folder from such a tree (a table there must be regenerable from a
commit); ``--allow-dirty`` on the command lines says otherwise on purpose.

`code_fingerprint()` hashes the training code (``src/`` and ``conf/``, reports aside), file by file:
a run records it when it starts, and `code_changes(old, new)` names what differs when it resumes,
so that one run never mixes two versions of the code that trains it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

__all__ = ["REPO_ROOT", "git_sha", "is_dirty", "check_results_dir", "DirtyTreeError", "TRAINING_CODE",
           "code_fingerprint", "code_changes"]

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


# What a training run executes (relative to the repository root), and what under it only reports.
TRAINING_CODE = ("src", "conf")
REPORT_CODE = ("src/bench/", "src/tables/")
_CODE_SUFFIXES = (".py", ".yaml", ".yml")


def code_fingerprint() -> dict[str, str]:
    """Path (relative, posix) -> sha256 prefix of every source file of the training code as it is
    on disk now (uncommitted edits included; reports under REPORT_CODE left out)."""
    out = {}
    for top in TRAINING_CODE:
        for p in sorted((REPO_ROOT / top).rglob("*")):
            rel = p.relative_to(REPO_ROOT).as_posix()
            if p.is_file() and p.suffix in _CODE_SUFFIXES and "__pycache__" not in p.parts \
                    and not rel.startswith(REPORT_CODE):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


def code_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The files that differ between two fingerprints, as 'changed: PATH' / 'added: ...' / 'removed: ...'."""
    changed = [f"changed: {k}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    return changed + [f"added: {k}" for k in sorted(new.keys() - old.keys())] + \
        [f"removed: {k}" for k in sorted(old.keys() - new.keys())]
