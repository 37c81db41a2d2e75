"""The per-dataset table, ``<out>/<dataset>.md``: per configuration (one row, its seeds aggregated)
the accuracy as trained / projected / decomposed with mean +- std over seeds, the paired gap to the
dense baseline, costs and their ratios; then the claims (claims.py), the lambda sweep and BatchNorm
recalibration, robustness, the per-run table, configurations and run times."""

from __future__ import annotations

import statistics
from collections import defaultdict

from .claims import PAPER_CLAIMS, _claims
from .fmt import _code_cell, _commits, _eval_sets, _gap, _mean, _mean_std, _si, _signed
from .load import _label, _recipe, get_entry


def _overrides_text(s: dict) -> str:
    ov = [o for o in s.get("overrides", []) if not o.startswith(("seed=", "hydra.", "data.root="))]
    return " ".join(f"`{o}`" for o in ov) or "(experiment defaults)"


def _family_order(model: str) -> tuple:
    entry = get_entry(model)
    base = entry.dense_name or entry.name
    return (base, entry.variant or "")


def _robustness_table(items: list[tuple], metric: str) -> list[str]:
    from src.data.corruptions import CORRUPTIONS

    rows = [(k, g) for k, g in items if any(s.get(f"robust_acc_{c}") is not None for s in g for c in CORRUPTIONS)]
    if not rows:
        return []
    lines = ["", "## Robustness (final models, primary set)", "",
             "Accuracy in % of the final (decomposed) model on corrupted copies of the primary evaluation set, "
             "generated from the exact images (src/data/corruptions.py: " +
             "; ".join(f"{c}: {d}" for c, d in CORRUPTIONS.items()) + "), and d: its change from the clean "
             "figure, per run, mean +- std over seeds.", "",
             "| model | route | seeds | clean | " + " | ".join(f"{c} | d({c})" for c in CORRUPTIONS) + " |",
             "|---|---|---:|---:|" + "---:|---:|" * len(CORRUPTIONS)]
    for key, g in rows:
        clean = f"test_{metric}_decomposed"
        cells = []
        for c in CORRUPTIONS:
            got = [s.get(f"robust_acc_{c}") for s in g]
            drops = [s[f"robust_acc_{c}"] - s[clean] for s in g if s.get(f"robust_acc_{c}") is not None]
            cells += [_mean_std(got), _signed(drops)]
        lines.append(f"| {_label(key, g, items)} | {key[2]} | {len(g)} | {_mean_std([s[clean] for s in g])} | "
                     + " | ".join(cells) + " |")
    return lines


def _lambda_sweep(items: list[tuple], metric: str) -> list[str]:
    """Where a model has regularized rows at several lambdas: decomposed accuracy per (lambda,
    model) and the lambda with the best mean over the models swept."""
    by_model: dict[str, dict[float, list[float]]] = defaultdict(dict)
    for (_, model, route, *_), g in items:
        if route == "regularized" and get_entry(model).variant:
            by_model[model].setdefault(float(g[0]["lambda"]), []).extend(s[f"test_{metric}_decomposed"] for s in g)
    swept = {m: v for m, v in by_model.items() if len(v) > 1}
    if not swept:
        return []
    models = sorted(swept)
    lambdas = sorted({lam for v in swept.values() for lam in v})
    lines = ["", "## Lambda", "",
             "Decomposed accuracy (mean over seeds) on the primary set per lambda; the mean over the models "
             "swept chooses lambda (highest mean; only lambdas every model has).", "",
             "| lambda | " + " | ".join(models) + " | mean |", "|---:|" + "---:|" * (len(models) + 1)]
    best = None
    for lam in lambdas:
        vals = [_mean(swept[m].get(lam, [])) for m in models]
        full = all(v is not None for v in vals)
        mean = statistics.mean(vals) if full else None
        if full and (best is None or mean > best[1]):
            best = (lam, mean)
        lines.append(f"| {lam:g} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
                     + f" | {'-' if mean is None else f'{mean:.2f}'} |")
    if best:
        lines += ["", f"Chosen: lambda = {best[0]:g} (mean {best[1]:.2f})."]
    return lines + _recalibration(items, metric)


def _recalibration(items: list[tuple], metric: str) -> list[str]:
    """Whether re-estimating BatchNorm after projection helps: per regularized run that did it,
    accuracy after projection without (projected_raw) and with recalibration, and the mean change."""
    key = f"test_{metric}"
    runs = [(k, s) for k, g in items for s in g
            if k[2] == "regularized" and s.get("bn_recalib") and s.get(f"{key}_projected_raw") is not None]
    if not runs:
        return []
    lines = ["", "### BatchNorm recalibration after projection", "",
             "Accuracy on the primary set after projection, before and after re-estimating BatchNorm statistics "
             "(`structure.bn_recalib`; decomposition then changes nothing). Without recalibration the decomposed "
             "model equals the projected one.", "",
             "| run | seed | lambda | projected, no recalibration | recalibrated | change |", "|---|---:|---:|---:|---:|---:|"]
    changes = []
    for k, s in sorted(runs, key=lambda r: (float(r[1]["lambda"]), r[0][1], r[1]["seed"])):
        raw, cal = s[f"{key}_projected_raw"], s[f"{key}_projected"]
        changes.append(cal - raw)
        lines.append(f"| {k[1]}{k[3]} | {s['seed']} | {float(s['lambda']):g} | {raw:.2f} | {cal:.2f} | "
                     f"{cal - raw:+.2f} |")
    better = sum(c > 0 for c in changes)
    lines += ["", f"Mean change from recalibration: {_signed(changes)} over {len(changes)} runs "
                  f"({better} better, {sum(c < 0 for c in changes)} worse, {sum(c == 0 for c in changes)} equal)."]
    return lines


def _per_run(items: list[tuple], metric: str, official: bool) -> list[str]:
    key = f"test_{metric}"
    head = "| run | seed | trained | projected | decomposed | d(dec) |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if official:
        head += " official exact | official JPEG |"
        rule += "---:|---:|"
    lines = ["", "## Per run", "", "Training time: all epochs, summed over the processes that ran them (a resumed run "
             "was interrupted and continued from its last epoch's checkpoint); img/s: the finishing process's.", "",
             head.rstrip("|").rstrip() + " | epochs | training time | img/s | code |", rule + "---:|---:|---:|---|"]
    for k, g in items:
        for s in g:
            row = (f"| {_label(k, g, items)} ({k[2]}) | {s['seed']} | {s[f'{key}_dense']:.2f} | {s[f'{key}_projected']:.2f} "
                   f"| {s[f'{key}_decomposed']:.2f} | {s[f'{key}_decomposed'] - s[f'{key}_dense']:+.2f} |")
            if official:
                row += "".join(f" {'-' if s.get(f) is None else format(s[f], '.2f')} |"
                               for f in ("official_test_acc_exact", "official_test_acc_jpeg"))
            rate = s.get("train_images_per_s")
            train_s = s.get("train_time_s")
            took = f"{train_s / 60:.1f} min" if train_s else f"{s['wall_time_s'] / 60:.1f} min"
            row += (f" {s['epochs']} | {took}{' (resumed)' if s.get('resumed') else ''} | {'-' if rate is None else rate} "
                    f"| {str(s.get('git_sha', '?'))[:7]} |")
            lines.append(row)
    return lines


# The reproduction's claims (issue 11 section 5): (label, structured model, dense model, the largest
# allowed drop of the decomposed model below the dense one, mean over the seeds both have).
def dataset_table(dataset: str, groups: dict[tuple, list[dict]], gap_vs_length: list[str] | None = None) -> str:
    """The table of `dataset`'s rows in `groups`; `gap_vs_length`: the section of length.py, after the
    claims (and its plot named with the others)."""
    metric = "miou" if dataset == "cityscapes" else "acc"
    label = "mIoU" if metric == "miou" else "top-1"
    items = sorted(((k, v) for k, v in groups.items() if k[0] == dataset),
                   key=lambda kv: (_family_order(kv[0][1]), kv[0][2], kv[0][3], kv[1][0].get("max_epochs") or 0,
                                   str(kv[1][0].get("lambda")), kv[0][5]))
    runs = [s for _, g in items for s in g]
    # a held-out primary set: the official test set's figures beside it ("-" where a run did not
    # look at it on purpose, e.g. a sweep that chooses a hyperparameter)
    official = any(s.get("eval_set", "test") != "test" for s in runs)
    profiles = sorted({s.get("profile", "") or "custom" for s in runs})
    devices = sorted({f"{s.get('device', '?')} x{s.get('world_size', 1)}, {s.get('threads', '?')} threads, torch {s.get('torch', '?')}" for s in runs})
    shas = sorted({s.get("git_sha", "?") for s in runs})
    baseline: dict[tuple, list[dict]] = {}
    for (_, model, route, *_), g in items:
        if not get_entry(model).variant and route == "regularized":
            # one dense configuration per recipe; with several the gap would be ambiguous: none ("-")
            baseline[(model, _recipe(g[0]))] = [] if (model, _recipe(g[0])) in baseline else g
    extra_head = "official exact (dec) | official JPEG (dec)" if official else "exact-subset (dec)"
    lines = [
        f"# {dataset}: structured vs dense (generated)",
        "",
        f"Generated by `python -m src.tables` from {len(runs)} runs; do not edit by hand. "
        f"Profile(s): {', '.join(profiles)}. Machine(s): {'; '.join(devices)}. Code: {', '.join(shas)}.",
        "",
        f"Primary evaluation set: {_eval_sets(runs)}. "
        f"{label.capitalize() if metric == 'miou' else 'Top-1'} in % on it at the final epoch (mean +- std over seeds; "
        "never a best epoch). trained: the model as trained (full kernels); projected: after W <- AA^+W (+ BatchNorm "
        "recalibration where enabled); decomposed: the deploy model (sum-pooling + small convs). "
        "Params / mults / adds: the decomposed model per image, with its ratio to the dense model (direct route, "
        "which trains the decomposed form and has no dense one: to the dense baseline's runs, where there are any) "
        "(adds: naive sum-pool convention). d(proj): projected minus trained before BN recalibration; "
        "d(dec): decomposed minus trained; vs dense: decomposed minus the dense baseline (paired by seed: "
        "mean +- std of the per-seed differences)."
        + (" official exact / JPEG: the decomposed model on the official test set's bit-exact images and on "
           "its JPEG-decoded ones (offline copy: 1,000 / 9,000), reported beside the primary set, never used "
           "for a choice." if official else ""),
        "",
        "| model | route | seeds | epochs | lambda | trained | projected | decomposed | d(proj) | d(dec) | vs dense "
        f"| {extra_head} | params | mults | adds | final residual | code |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if official else "") + "---:|---:|---:|---:|---|",
    ]
    configs, mixed = [], []
    for key, g in items:
        _, model, route, tag, profile, cfg = key
        first = g[0]
        label = _label(key, g, items)
        commits = _commits(g)
        code = _code_cell(commits)
        if len(commits) > 1:
            mixed.append(label)
        configs.append(f"- {label} ({route}): config `{cfg.removeprefix('legacy:')[:10]}`, "
                       f"seeds {', '.join(str(s['seed']) for s in g)}; overrides {_overrides_text(first)}")
        for s in g[1:]:
            if (s["params_decomposed"], s["mults_decomposed"]) != (first["params_decomposed"], first["mults_decomposed"]):
                raise ValueError(f"runs of {model} disagree on the architecture: {first['_dir']} vs {s['_dir']}")
        key = f"test_{metric}"
        d_proj = [s[f"{key}_projected_raw"] - s[f"{key}_dense"] for s in g if s.get(f"{key}_projected_raw") is not None]
        d_dec = [s[f"{key}_decomposed"] - s[f"{key}_dense"] for s in g]
        dense_name = get_entry(model).dense_name or model
        vs_dense = _gap(g, baseline.get((dense_name, _recipe(first)), []), f"{key}_decomposed")
        if official:
            extra = (f"{_mean_std([s.get('official_test_acc_exact') for s in g])} "
                     f"| {_mean_std([s.get('official_test_acc_jpeg') for s in g])}")
        else:
            extra = _mean_std([s.get(f"{key}_decomposed_exact_subset") for s in g])
        lam = "-" if route == "direct" or not get_entry(model).variant else f"{first['lambda']:g}"
        residual = _mean([s.get("structural_residual_final") for s in g])
        # the ratios' dense model: the run's own full-kernel form, except on the direct route, which never
        # has one (it trains the decomposed form): there the dense baseline's runs, where there are any
        ref = first if route != "direct" else next(iter(baseline.get((dense_name, _recipe(first)), [])), None)

        def count(what: str) -> str:
            value = first[f"{what}_decomposed"]
            text = f"{value:,}" if what == "params" else _si(value)
            return f"{text} ({value / ref[f'{what}_dense']:.2f}x)" if ref else text
        lines.append(
            f"| {label} | {route} | {len(g)} | {first['epochs']} | {lam} | {_mean_std([s[f'{key}_dense'] for s in g])} "
            f"| {_mean_std([s[f'{key}_projected'] for s in g])} | {_mean_std([s[f'{key}_decomposed'] for s in g])} "
            f"| {_mean_std(d_proj) if d_proj else '-'} | {_mean_std(d_dec)} | {vs_dense} | {extra} "
            f"| {count('params')} | {count('mults')} | {count('adds')} | {residual:.2e} | {code} |"
        )
    lines += _claims(items, metric)
    lines += gap_vs_length or []
    lines += _lambda_sweep(items, metric)
    lines += _robustness_table(items, metric)
    if official or any(len(g) > 1 for _, g in items):
        lines += _per_run(items, metric, official)
    timing = [f"{s['model']}{s.get('tag', '')} seed {s['seed']}: "
              + (f"{s['train_time_s'] / 60:.1f} min training" + (" (resumed)" if s.get("resumed") else "")
                 if s.get("train_time_s") else f"{s['wall_time_s'] / 60:.1f} min")
              + (f", {s['train_images_per_s']} img/s" if s.get("train_images_per_s") else "")
              for _, g in items for s in g]
    lines += ["", "Configurations (a row's runs differ in the seed only):", "", *configs]
    if mixed:
        lines += ["", f"**Warning**: rows from more than one code commit: {', '.join(mixed)}."]
    plots = [f"{dataset}_acc_vs_macs.png", f"{dataset}_training.png"] + ([f"{dataset}_gap_vs_epochs.png"] if gap_vs_length else [])
    lines += ["", PAPER_CLAIMS, "", "Plots: " + ", ".join(f"`{p}`" for p in plots) + ".", "",
              "Run times (training time over all epochs, else the finishing process's wall time; its training throughput): " + "; ".join(timing) + "."]
    return "\n".join(lines) + "\n"


