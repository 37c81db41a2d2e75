"""Run identity: a run directory holds one run, and every setting that changes a result changes
the run's identity.

- `identity(cfg)`: the resolved configuration minus the keys that cannot change a result
  (where the data lives, progress bars, loggers, resume, run naming). Stored in every run's
  `config.yaml`; a second command into the same directory must have the same identity, or it is
  refused with the differing keys (`check_run_dir`), before anything is written.
- `config_hash(identity, exclude_seed=True)`: a short hash of it; the seeds of one
  configuration share it, so `src.tables` groups runs by it (a row's seeds differ in the seed
  only). Recorded in `summary.json` as `config_hash` (and `run_hash` with the seed).
- The `run_suffix` resolver names a run by its non-default overrides (Hydra's
  `override_dirname`, minus the keys above): `runs/cifar10/struct_resnet20_a+structure.lam=0.5/seed0`,
  so a sweep by hand never lands in an earlier run's directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["NON_IDENTITY_KEYS", "identity", "config_hash", "diff", "check_run_dir", "listing", "RunDirError",
           "run_suffix"]

# Keys (dotted prefixes) that do not change what a run computes.
NON_IDENTITY_KEYS = (
    "resume", "run_name", "debug", "hydra",
    "data.root", "data.download", "data.url", "data.md5", "data.device", "data.eval_batch_size",
    "data.num_workers", "data.pin_memory",
    "trainer.progress_bar", "trainer.log_every_n_steps", "logger",
    # where the starting weights live (like data.root): one configuration started from each seed's
    # trained network stays one configuration; summary.json records the path
    "model.init_from",
)
# Hydra override keys left out of a run's name (besides the identity-free ones above).
NAME_EXCLUDE = ("seed", "exp", "model.name", "profile", "tag", *NON_IDENTITY_KEYS)
MAX_SUFFIX = 60


class RunDirError(Exception):
    """A command would mix two different runs in one directory."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def _excluded(key: str, keys=NON_IDENTITY_KEYS) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """Flat {dotted key: value} of the resolved config, without NON_IDENTITY_KEYS."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in sorted(_flatten(container).items()) if not _excluded(k)}


def config_hash(ident: dict[str, Any], exclude_seed: bool = True) -> str:
    items = {k: v for k, v in ident.items() if not (exclude_seed and k == "seed")}
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every key whose value differs (absent keys shown as <absent>)."""
    lines = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if a != b:
            lines.append(f"{k}: {a!r} -> {b!r}")
    return lines


def listing(items: list[str], limit: int) -> str:
    """`items` one per line (indented), the first `limit` of them and how many more."""
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n  ".join(items[:limit]) + more


def check_run_dir(run_dir: Path, ident: dict[str, Any], config_name: str = "config.yaml") -> None:
    """Refuse (RunDirError) if `run_dir` already holds a run (a checkpoint or a summary) whose
    identity differs from `ident`; one with no readable config is refused too. A directory
    without either (a run that failed or was killed before its first checkpoint) may be reused."""
    run_dir = Path(run_dir)
    stored = run_dir / config_name
    if not ((run_dir / "summary.json").exists() or any((run_dir / "checkpoints").glob("*.ckpt"))):
        return
    if not stored.exists():
        raise RunDirError(f"{run_dir} holds a run (checkpoints or summary.json) but no {config_name}: "
                          f"cannot tell whether it is this configuration. Choose another hydra.run.dir.")
    try:
        old = identity(OmegaConf.to_container(OmegaConf.load(stored), resolve=False))
    except Exception as e:  # a damaged yaml file
        raise RunDirError(f"{stored} cannot be read ({e}); choose another hydra.run.dir") from None
    changes = diff(old, ident)
    if changes:
        finished = (run_dir / "summary.json").exists()
        state = "a finished run" if finished else "an unfinished run"
        shown = listing(changes, 20)
        raise RunDirError(
            f"{run_dir} holds {state} with a different configuration; refusing to "
            f"{'report' if finished else 'resume'} it as this one. Differing keys (stored -> now):\n  "
            f"{shown}\nNothing was changed on disk. Use another directory (the default run name already "
            f"includes the overrides), or repeat the stored settings to resume it.")


def run_suffix() -> str:
    """'+k=v,k2=v2' of this Hydra job's result-changing overrides (a short hash when long); ''
    without overrides or outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # not inside a Hydra job (plain compose, notebooks)
        return ""
    kept = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if not _excluded(key, NAME_EXCLUDE):
            kept.append(o.lstrip("+~").replace("/", "_").replace(" ", ""))
    if not kept:
        return ""
    text = ",".join(sorted(kept))
    if len(text) > MAX_SUFFIX:
        text = "h" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return "+" + text


if not OmegaConf.has_resolver("run_suffix"):
    OmegaConf.register_new_resolver("run_suffix", run_suffix)
