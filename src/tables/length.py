"""The gap against training length: a section of ``<dataset>.md`` and ``<dataset>_gap_vs_epochs.png``.

For each gap claim named in claims.yaml (`gap_vs_length.claims`), the paired gap (the decomposed
structured model minus the dense one, same seed, same recipe and length) of every run pair found in
the table's runs folder and in the folders beside it (`--length-runs`, else claims.yaml's
`gap_vs_length.with` for that results folder), and the gap in final-epoch training accuracy
(``train/acc`` of metrics.csv) of the same pairs. Per length: the per-seed gaps and their mean +- std.
A fit gap(E) = g_inf + b / E by least squares over the per-seed gaps on the primary split (the
evaluation set of the table's own runs); its uncertainty by a bootstrap over seeds (each length's
pairs resampled with replacement, a fixed RNG seed: the output is deterministic), and its value at
`extrapolate_to` epochs, labelled as an extrapolation. Pairs on another split are listed as such and
kept out of the fit. Fewer than two lengths on the primary split: "not enough lengths to fit".
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from src.provenance import REPO_ROOT

from .claims import GAP_CLAIMS, GAP_VS_LENGTH, GapClaim, claim_configs, one_config, recipe_order
from .fmt import _signed
from .load import group_runs, load_runs, read_curves


@dataclass(frozen=True)
class Pair:
    """One structured run and the dense run of its seed, recipe and length."""

    claim: str                # the gap claim's label
    epochs: int               # the recipe's length (trainer.max_epochs)
    eval_set: str             # the split both were evaluated on
    train_subset: int | None  # training images
    profile: str
    seed: int
    gap: float                # decomposed structured minus dense, in points
    train_gap: float | None   # final-epoch train/acc, structured minus dense, in points (None: not logged)
    precision: str = ""       # the training steps' precision where not fp32 (summary.json `precision`)


@dataclass(frozen=True)
class Fit:
    """gap(E) = g_inf + b / E over the per-seed gaps of the primary split, with its bootstrap."""

    lengths: tuple[int, ...]
    points: int
    g_inf: float
    b: float
    boot_g_inf: tuple[float, ...]
    boot_b: tuple[float, ...]
    single_seed_lengths: tuple[int, ...]  # lengths with one pair: they add no spread to the bootstrap

    def at(self, epochs: float) -> float:
        return self.g_inf + self.b / epochs

    def boot_at(self, epochs: float) -> list[float]:
        return [g + b / epochs for g, b in zip(self.boot_g_inf, self.boot_b)]


@dataclass
class Study:
    """What the section and the plot show."""

    claims: list[GapClaim]
    primary: str
    sources: list[str]
    pairs: list[Pair]
    fits: dict[str, Fit | None]
    notes: list[str] = field(default_factory=list)
    extrapolate_to: int = 200


def default_folders(runs_dir: Path) -> list[Path] | None:
    """The folders claims.yaml (`gap_vs_length.with`) reads beside `runs_dir` (e.g. results/long/runs:
    results/medium/runs and results/medium/gap/runs); None where it names none (no section)."""
    parent = Path(runs_dir).resolve().parent
    names = (GAP_VS_LENGTH.get("with") or {}).get(parent.name)
    return None if names is None else [parent.parent / n for n in names]


def _shown(path: Path) -> str:
    """A folder as the section names it: relative to the repository where it lies inside it."""
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return p.as_posix()


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of gap = g_inf + b / E over (E, gap) points: (g_inf, b). Needs two distinct E."""
    xs = [1.0 / e for e, _ in points]
    ys = [y for _, y in points]
    mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("gap(E) = g_inf + b / E needs points at two lengths at least")
    b = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def bootstrap(by_length: dict[int, list[float]], resamples: int, seed: int) -> list[tuple[float, float]]:
    """(g_inf, b) of `resamples` refits, each on every length's gaps resampled with replacement (as
    many as it has), from random.Random(seed): the same numbers on every machine."""
    rng = random.Random(seed)
    lengths = sorted(by_length)
    out = []
    for _ in range(resamples):
        points = [(e, by_length[e][rng.randrange(len(by_length[e]))]) for e in lengths for _ in by_length[e]]
        out.append(fit(points))
    return out


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _final_train_acc(s: dict) -> float | None:
    """The run's training accuracy (metrics.csv `train/acc`, in %) at its final epoch."""
    series = read_curves(Path(s["_dir"])).get("train/acc")
    if not series or series[-1][0] != s["epochs"] - 1:
        return None
    return 100.0 * series[-1][1]


def collect(runs: list[dict], dataset: str, metric: str = "acc") -> tuple[list[Pair], list[str]]:
    """Every structured / dense pair of the study's claims among `runs` (one configuration per model
    and recipe, as the claims use them), and notes on what could not be paired."""
    key = f"test_{metric}_decomposed"
    runs = [s for s in runs if s.get("dataset", "?") == dataset and not s.get("method")]
    by = claim_configs(sorted(group_runs(runs).items()))
    recipes = sorted({r for _, _, r in by}, key=recipe_order)
    claims = [c for c in GAP_CLAIMS if c.label in GAP_VS_LENGTH["claims"]]
    pairs, notes = [], []
    for recipe in recipes:
        profile, _, epochs, train, _, eval_set = recipe
        for c in claims:
            for model in (c.structured, c.dense):
                if len(by.get((model, "regularized", recipe), {})) > 1:
                    notes.append(f"{model} has more than one configuration at {epochs} epochs ({profile}, "
                                 f"`{eval_set}`): left out there")
            mine, dense = one_config(by, c.structured, recipe), one_config(by, c.dense, recipe)
            base = {s["seed"]: s for s in dense}
            alone = [f"seed {s['seed']}" for s in mine if s["seed"] not in base]
            if alone:
                notes.append(f"{c.structured} at {epochs} epochs ({profile}) {', '.join(alone)}: no {c.dense} run of "
                             f"that seed and length (yet)")
            for s in mine:
                d = base.get(s["seed"])
                if d is None:
                    continue
                ta, td = _final_train_acc(s), _final_train_acc(d)
                precision = "/".join(sorted({str(r.get("precision")) for r in (s, d)
                                             if r.get("precision") not in (None, "32", "32-true")}))
                pairs.append(Pair(c.label, epochs, eval_set, train, profile, s["seed"], s[key] - d[key],
                                  None if ta is None or td is None else ta - td, precision))
    return pairs, notes


def study(dataset: str, runs: list[dict], folders: list[Path], runs_dir: Path) -> Study:
    """The study of `runs` (the table's own, from `runs_dir`) together with the runs under `folders`
    (a folder that does not exist is named in a note)."""
    own = [s for s in runs if s.get("dataset", "?") == dataset and not s.get("method")]
    splits = Counter(s.get("eval_set", "test") for s in own)
    primary = min(splits, key=lambda k: (-splits[k], k))
    seen = {Path(s["_dir"]).resolve() for s in runs}
    pool, sources, notes = list(runs), [_shown(runs_dir)], []
    for folder in folders:
        if not Path(folder).is_dir():
            notes.append(f"`{_shown(folder)}` not found")
            continue
        sources.append(_shown(folder))
        for s in load_runs(folder):
            if Path(s["_dir"]).resolve() not in seen:
                seen.add(Path(s["_dir"]).resolve())
                pool.append(s)
    pairs, more = collect(pool, dataset)
    claims = [c for c in GAP_CLAIMS if c.label in GAP_VS_LENGTH["claims"]]
    boot = GAP_VS_LENGTH["bootstrap"]
    fits: dict[str, Fit | None] = {}
    for c in claims:
        by_length: dict[int, list[float]] = defaultdict(list)
        for p in pairs:
            if p.claim == c.label and p.eval_set == primary:
                by_length[p.epochs].append(p.gap)
        if len(by_length) < 2:
            fits[c.label] = None
            continue
        points = [(e, g) for e in sorted(by_length) for g in by_length[e]]
        g_inf, b = fit(points)
        resampled = bootstrap(by_length, int(boot["resamples"]), int(boot["seed"]))
        fits[c.label] = Fit(tuple(sorted(by_length)), len(points), g_inf, b, tuple(g for g, _ in resampled),
                            tuple(b for _, b in resampled), tuple(e for e in sorted(by_length) if len(by_length[e]) == 1))
    return Study(claims, primary, sources, pairs, fits, notes + more, int(GAP_VS_LENGTH["extrapolate_to"]))


def _rows(st: Study, claim: GapClaim) -> list[tuple[tuple, list[Pair]]]:
    """The claim's pairs per (length, split, training images), primary split first at each length."""
    rows: dict[tuple, list[Pair]] = defaultdict(list)
    for p in st.pairs:
        if p.claim == claim.label:
            rows[(p.epochs, p.eval_set != st.primary, p.eval_set, p.train_subset)].append(p)
    return sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0))


def _interval(values: list[float]) -> str:
    return f"+- {statistics.stdev(values):.2f} [{_quantile(values, 0.025):+.2f}, {_quantile(values, 0.975):+.2f}]"


def section(st: Study, plot_name: str) -> list[str]:
    boot = GAP_VS_LENGTH["bootstrap"]
    other = sorted({(p.eval_set, p.train_subset) for p in st.pairs if p.eval_set != st.primary})
    lines = ["", "## Gap against training length", "",
             "The paired gap against the number of training epochs: decomposed structured model minus dense, "
             "same seed, same recipe and length, final epoch, on the primary split "
             f"(`{st.primary}`); beside it the same pairs' gap in training accuracy (metrics.csv `train/acc` at "
             "the final epoch: the running accuracy over that epoch's augmented training batches). Per length: "
             "each seed's gap, and mean +- std over the seeds; profile: the runs' (with the training steps' precision "
             "where not fp32). Runs from: "
             + ", ".join(f"`{s}`" for s in st.sources) + "."
             + ("" if not other else " Pairs on another split ("
                + "; ".join(f"`{e}`, trained on {t:,} images" if t else f"`{e}`" for e, t in other)
                + ") are listed as such and kept out of the fit: a split-to-split difference is not a "
                  "change with length."), "",
             "| claim | epochs | split | profile | pairs | gap per seed | gap | train-acc gap per seed "
             "| train-acc gap |", "|---|---:|---|---|---:|---|---:|---|---:|"]
    for c in st.claims:
        for (epochs, is_other, eval_set, train), ps in _rows(st, c):
            ps = sorted(ps, key=lambda p: (p.seed, p.profile))
            split = f"`{eval_set}` (other split, not in the fit)" if is_other else "primary"
            per_seed = ", ".join(f"s{p.seed} {p.gap:+.2f}" for p in ps)
            train_gaps = [p.train_gap for p in ps]
            per_seed_train = ", ".join("-" if p.train_gap is None else f"s{p.seed} {p.train_gap:+.2f}" for p in ps)
            lines.append(f"| ({c.label}) {c.structured} - {c.dense} | {epochs} | {split} "
                         f"| {', '.join(sorted({p.profile + (f' ({p.precision})' if p.precision else '') for p in ps}))} "
                         f"| {len(ps)} | {per_seed} "
                         f"| {_signed([p.gap for p in ps])} | {per_seed_train} | {_signed(train_gaps)} |")
    if not st.pairs:
        lines.append("| - | - | - | - | 0 | no structured / dense pair yet | - | - | - |")
    lines += ["", f"Fit: gap(E) = g_inf + b / E, least squares over the per-seed gaps on the primary split; "
                  f"uncertainty: bootstrap over seeds ({int(boot['resamples']):,} refits, each length's seeds "
                  f"resampled with replacement, RNG seed {int(boot['seed'])}): std and [2.5 %, 97.5 %] of the "
                  f"refits. The gap at {st.extrapolate_to} epochs is an **extrapolation** of the fit beyond the "
                  "longest run, not a measurement.", "",
              f"| claim | lengths | pairs | g_inf | b | gap at {st.extrapolate_to} epochs (extrapolation) |",
              "|---|---|---:|---:|---:|---:|"]
    for c in st.claims:
        f = st.fits.get(c.label)
        if f is None:
            have = sorted({p.epochs for p in st.pairs if p.claim == c.label and p.eval_set == st.primary})
            why = (f"primary split: {', '.join(str(e) for e in have)} epochs only" if have else "no pair on the primary split")
            lines.append(f"| ({c.label}) | {', '.join(str(e) for e in have) or '-'} "
                         f"| {sum(p.claim == c.label and p.eval_set == st.primary for p in st.pairs)} "
                         f"| not enough lengths to fit ({why}) | - | - |")
            continue
        lines.append(f"| ({c.label}) | {', '.join(str(e) for e in f.lengths)} | {f.points} "
                     f"| {f.g_inf:+.2f} {_interval(list(f.boot_g_inf))} | {f.b:+.1f} +- {statistics.stdev(f.boot_b):.1f} "
                     f"| {f.at(st.extrapolate_to):+.2f} {_interval(f.boot_at(st.extrapolate_to))} |")
    single = sorted({(c.label, e) for c in st.claims if st.fits.get(c.label) for e in st.fits[c.label].single_seed_lengths})
    if single:
        lines += ["", "A length with one pair adds no spread to the bootstrap, which then understates the "
                      "uncertainty: " + ", ".join(f"({c}) at {e} epochs" for c, e in single) + "."]
    if st.notes:
        lines += ["", "Not in the section: " + "; ".join(st.notes) + "."]
    lines += ["", f"Plot: `{plot_name}` (per-seed gaps, mean +- std per length, the fit, dashed where it "
                  "extrapolates)."]
    return lines


__all__ = ["Pair", "Fit", "Study", "default_folders", "fit", "bootstrap", "collect", "study", "section"]
