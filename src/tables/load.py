"""Run loading: every ``summary.json`` under a folder (validated against src/summary.py), the
per-epoch series of its ``metrics.csv``, and the grouping of runs into table rows (one configuration
per row; a row's runs differ in the seed only)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from src import summary


def get_entry(model: str):
    """The model's registry entry (src.models.get_entry), the model zoo imported on first use: it takes
    seconds, and `--help` or an error needs none of it."""
    from src.models import get_entry as entry

    return entry(model)


def load_runs(runs_dir: Path) -> list[dict]:
    """Every summary under `runs_dir`, validated against src/summary.py (ValueError naming a file
    that does not follow it), with its directory as `_dir`."""
    runs = []
    for path in sorted(Path(runs_dir).rglob(summary.FILENAME)):
        s = summary.load(path)
        s["_dir"] = path.parent
        runs.append(s)
    return runs


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series from metrics.csv (one row per epoch; should a file hold an epoch twice,
    the last row wins)."""
    path = run_dir / "metrics.csv"
    series: dict[str, dict[int, float]] = defaultdict(dict)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            for key in ("val/acc", "val/miou", "residual/mean", "residual/max", "train/loss_epoch", "train/acc"):
                if row.get(key) not in (None, ""):
                    series[key][int(float(epoch))] = float(row[key])
    return {k: sorted(v.items()) for k, v in series.items()}


LEGACY_KEYS = ("dataset", "model", "route", "tag", "profile", "lambda", "lambda_ramp_epochs", "max_epochs",
               "train_subset", "test_subset", "bn_recalib")


def config_key(s: dict) -> str:
    """The configuration a run belongs to: its `config_hash` (every result-changing setting but
    the seed; src/runs.py), or, for summaries written before it existed, the settings they record."""
    if s.get("config_hash"):
        return s["config_hash"]
    return "legacy:" + "|".join(f"{k}={s.get(k)}" for k in LEGACY_KEYS)


def group_runs(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by (dataset, model, route, tag, profile, configuration): a group's runs differ in
    the seed only. Two runs of one configuration with the same seed are an error."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in runs:
        key = (s.get("dataset", "?"), s["model"], s.get("route", "regularized"), s.get("tag", ""),
               s.get("profile", ""), config_key(s))
        groups[key].append(s)
    for g in groups.values():
        g.sort(key=lambda s: s["seed"])
        seen: dict[int, Path] = {}
        for s in g:
            if s["seed"] in seen:
                raise ValueError(f"two runs of one configuration with seed {s['seed']}: {seen[s['seed']]} and "
                                 f"{s['_dir']}; remove one (a table row averages distinct seeds)")
            seen[s["seed"]] = s["_dir"]
    return dict(sorted(groups.items()))


def _recipe(s: dict) -> tuple:
    """What a structured run and its dense baseline must share to be compared."""
    return (s.get("profile", ""), s.get("tag", ""), s.get("max_epochs"), s.get("train_subset"), s.get("test_subset"),
            s.get("eval_set", "test"))


def _label(key: tuple, g: list[dict], items: list[tuple]) -> str:
    """The row's name: the model (with tag), plus the configuration's short hash when the table
    has several configurations of that model and route."""
    _, model, route, tag, _, cfg = key
    same = [k for k, _ in items if k[1:4] == key[1:4]]
    return f"{model}{tag}" + (f" [{cfg.removeprefix('legacy:')[:6]}]" if len(same) > 1 else "")


