"""Formatting helpers shared by the tables: mean +- std, signed differences, SI units, seed pairing,
commit cells. Every figure is printed with two decimals; outcomes are decided on the figure as shown
(`_r2`)."""

from __future__ import annotations

import statistics


def _mean_std(values: list[float], sign: bool = False) -> str:
    """'m +- s' over the values present ('m' for one value, '-' for none), 2 decimals; `sign`:
    the mean with its sign ('+0.12')."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = f"{statistics.mean(values):{'+' if sign else ''}.2f}"
    return mean if len(values) == 1 else f"{mean} +- {statistics.stdev(values):.2f}"


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f}"


def _signed(values: list[float]) -> str:
    return _mean_std(values, sign=True)


def _paired(g: list[dict], base: list[dict], key: str) -> list[float]:
    """Per-seed differences g - base over the seeds both have (each list one configuration: a
    repeated seed is an error, never a silent choice)."""
    for runs in (g, base):
        seeds = [s["seed"] for s in runs]
        if len(seeds) != len(set(seeds)):
            raise ValueError(f"runs of {runs[0]['model']} repeat a seed ({sorted(seeds)}): pairing by seed needs "
                             f"one configuration")
    by_seed = {s["seed"]: s[key] for s in base}
    return [s[key] - by_seed[s["seed"]] for s in g if s["seed"] in by_seed]


def _gap(g: list[dict], base: list[dict], key: str) -> str:
    """Decomposed accuracy minus the dense baseline's: mean +- std over the seeds both have (paired
    by seed), else the difference of the means."""
    if not base:
        return "-"
    diffs = _paired(g, base, key)
    if len(diffs) == len(g):
        return _signed(diffs)
    return f"{_mean([s[key] for s in g]) - _mean([s[key] for s in base]):+.2f}"


def _r2(v: float) -> float:
    """A figure as displayed (2 decimals): outcomes are decided on what the table shows, so float
    noise in a mean cannot flip one."""
    return round(v + 0.0, 2) + 0.0


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _eval_sets(runs: list[dict]) -> str:
    names = sorted({s.get("eval_set", "test") for s in runs})
    text = []
    for n in names:
        if n == "test":
            text.append("`test` (the official CIFAR-10 test set)")
        else:
            text.append(f"`{n}` (training images held out: never trained on, exact)")
    return ", ".join(text)


def _commits(g: list[dict]) -> list[str]:
    """The distinct commits of a group of runs (7 characters, '-dirty' kept)."""
    return sorted({str(s.get("git_sha", "?"))[:7] + ("-dirty" if str(s.get("git_sha", "")).endswith("-dirty") else "")
                   for s in g})


def _code_cell(commits: list[str]) -> str:
    return ", ".join(commits) + (" **(mixed commits)**" if len(commits) > 1 else "")


