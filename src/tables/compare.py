"""The compression comparison, ``<out>/compare.md``: every compression method and target (runs with a
`method`: src/compress) beside the from-scratch structured models and the dense baseline of the same
protocol, with measured latency (``latency.json`` beside the runs' folder), and the verdicts at equal
multiplications and at equal measured latency. Which models are the dense baseline and the
from-scratch structured models of each target: claims.yaml (`compare`)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .claims import COMPARE
from .fmt import _code_cell, _commits, _eval_sets, _gap, _mean, _mean_std, _paired, _r2, _seeds, _si, _signed

LATENCY_FILE = "latency.json"  # written by experiments/compare_latency.py beside the runs' folder


def _compare_key(s: dict) -> str:
    """A compression run's row: '<method>_<target>' from its tag ('_prune_l1_a' -> 'prune_l1_a')."""
    return (s.get("tag") or f"_{s['method']}").lstrip("_")


def _latency(lat: dict, name: str, batch: int) -> str:
    """'ms (ratio to dense)', and for a structured model the same deployed with its eager plan."""
    models = lat.get("models") or {}
    row = models.get(name, {}).get(f"batch{batch}")
    if not row:
        return "-"
    def cell(r: dict) -> str:
        spread = f" [{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}]" if r.get("ratio_range") else ""
        return f"{r['ms']:.2f} ({r['ratio']:.2f}x{spread})"

    text = cell(row)
    planned = models.get(f"{name}+plan", {}).get(f"batch{batch}")
    if planned:
        text += f"; plan: {cell(planned)}"
    return text


def _fastest(lat: dict, name: str, batch: int) -> tuple[float, str] | None:
    """The model's measured latency (ms) at `batch`: the faster of its plain deployment and its
    eager deploy plan (both exact), and which one."""
    models = lat.get("models") or {}
    found = [(models[n][f"batch{batch}"]["ms"], how) for n, how in ((name, "plain"), (f"{name}+plan", "plan"))
             if (models.get(n, {}).get(f"batch{batch}") or {}).get("ms") is not None]
    return min(found) if found else None


def _at_latency(points: list[tuple[float, float]], ms: float) -> float | None:
    """A method's accuracy at latency `ms`: linear between its measured points on its accuracy-latency
    frontier (each point more accurate than every faster one); the frontier's best beyond its
    slowest point; None below its fastest point (no measurement that fast)."""
    frontier: list[tuple[float, float]] = []
    for p in sorted(points):
        if not frontier or p[1] > frontier[-1][1]:
            frontier.append(p)
    if not frontier or ms < frontier[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(frontier, frontier[1:]):
        if x0 <= ms <= x1:
            return y0 + (y1 - y0) * (ms - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return frontier[-1][1]


def _verdict(rows: dict[str, list[dict]], refs: dict[str, list[dict]], dense: list[dict], lat: dict) -> list[str]:
    """The paper's claim (structured at least as accurate as pruning / SVD at the same cost), per
    target: at equal mults (the rows are built to equal mults; accuracy differences paired by seed)
    and at equal measured latency (each baseline's accuracy at the structured model's latency,
    interpolated on its measured accuracy-latency points: dense and its targets; and, free of any
    interpolation, which measured points dominate which)."""
    acc = "test_acc_decomposed"
    models = lat.get("models") or {}
    baselines = sorted({g[0]["method"] for g in rows.values() if g[0]["method"] != "structured"})
    structured = [(name, label, t) for t, scratch in COMPARE["targets"].items()
                  for name, label in ((f"structured_{t}", "structured, fine-tuned"), (scratch, "structured, from scratch"))]

    def mean_acc(g: list[dict]) -> float:
        return _mean([s[acc] for s in g])

    macs, speed = [], []
    for name, label, t in structured:
        g = rows.get(name) or refs.get(name) or []
        if not g:
            continue
        mine_acc = mean_acc(g)
        for m in baselines:
            diffs = _paired(g, rows.get(f"{m}_{t}", []), acc)
            if diffs:
                d = _r2(statistics.mean(diffs))
                spread = " (within the seeds' spread)" if len(diffs) > 1 and abs(d) <= statistics.stdev(diffs) else ""
                macs.append(f"| {t.upper()} | {label} | {m} | {_signed(diffs)} ({_seeds(len(diffs))}){spread} "
                            f"| {'structured' if d > 0 else m if d < 0 else 'tie'} |")
        for batch in (64, 1):
            mine = _fastest(lat, name, batch)
            if mine is None:
                continue
            dense_ms = (models.get(COMPARE["dense"], {}).get(f"batch{batch}") or {}).get("ms") if dense else None
            for m in baselines:
                measured = [(tt.upper(), *ms, mean_acc(rows[f"{m}_{tt}"])) for tt in COMPARE["targets"]
                            if rows.get(f"{m}_{tt}") and (ms := _fastest(lat, f"{m}_{tt}", batch))]
                if not measured:
                    continue
                pts = [(ms, a) for _, ms, _, a in measured] + ([(dense_ms, mean_acc(dense))] if dense_ms else [])
                pareto = []
                for target, ms, _, a in measured:
                    if (ms, a) != (mine[0], mine_acc) and ms <= mine[0] and _r2(a) >= _r2(mine_acc):
                        pareto.append(f"{m} {target} dominates")
                    elif (ms, a) != (mine[0], mine_acc) and mine[0] <= ms and _r2(mine_acc) >= _r2(a):
                        pareto.append(f"dominates {m} {target}")
                theirs = _at_latency(pts, mine[0])
                if theirs is None:
                    cell = "-"
                    outcome = f"no comparison: faster than every {m} point (fastest {min(p[0] for p in pts):.2f} ms)"
                else:
                    cell = f"{theirs:.2f} ({mine_acc - theirs:+.2f})"
                    d = _r2(mine_acc - theirs)
                    if d > 0:
                        outcome = "structured"
                    elif d == 0:
                        outcome = "tie"
                    elif dense_ms is not None and mine[0] >= dense_ms:
                        outcome = "the dense model (as fast or faster, more accurate)"
                    else:
                        outcome = m
                speed.append(f"| {t.upper()} | {label} | {batch} | {mine[0]:.2f} ({mine[1]}) | {mine_acc:.2f} | {m} "
                             f"| {cell} | {'; '.join(pareto) or '-'} | {outcome} |")
    lines = []
    if macs:
        lines += ["", "## Verdict at equal multiplications", "",
                  "Structured minus the baseline at the same target (mults within 2 %), primary set, paired by seed. "
                  "The fine-tuned structured rows start from the same dense run and fine-tune as long as the "
                  "baselines; the from-scratch rows are the reproduction's, trained from random weights for its "
                  "full schedule.", "",
                  "| target | structured | baseline | accuracy difference | more accurate |", "|---|---|---|---:|---|",
                  *macs]
    if speed:
        lines += ["", "## Verdict at equal measured latency", "",
                  "The structured model's latency (the faster of its plain deployment and its eager deploy plan) and "
                  "each baseline's accuracy at that latency, interpolated linearly between the baseline's measured "
                  "points (its targets and the dense model, on its accuracy-latency frontier; beyond its slowest "
                  "point, its best; in brackets, structured minus it). Each point is the mean over its own seeds "
                  "(target B: seed 0 only). A straight line between two points understates a baseline whose "
                  "accuracy-latency curve is concave, which favours structured; the Pareto column needs no "
                  "interpolation: a measured point that is at least as fast and as accurate dominates.", "",
                  "| target | structured | batch | structured ms | structured accuracy | baseline "
                  "| baseline accuracy at that latency | Pareto (measured points) | more accurate |",
                  "|---|---|---:|---:|---:|---|---:|---|---|", *speed]
    return lines


def _starting_points(runs: list[dict], dense: list[dict]) -> list[str]:
    """Whether every compression run started from the dense run of its own seed in this table
    (`init_from_run` in its summary), which the paired gaps to dense assume."""
    ids = {f"{s.get('config_hash')} seed {s['seed']}": s["seed"] for s in dense}
    unknown = [s for s in runs if not s.get("init_from_run")]
    other = [s for s in runs if s.get("init_from_run")
             and ids.get(s["init_from_run"].split(" at ")[0]) != s["seed"]]
    named = ", ".join(f"{_compare_key(s)} seed {s['seed']}" for s in other)
    text = ("Starting points: " + (f"{len(runs) - len(unknown) - len(other)} of {len(runs)} runs started from the "
                                   "dense run of their seed in this table (`init_from_run`)"))
    if unknown:
        text += f"; {len(unknown)} {'do' if len(unknown) > 1 else 'does'} not record it"
    if other:
        text += f". **Warning**: {named} started from a run that is not this table's dense run of its seed"
    return ["", text + "."]


def compare_table(runs: list[dict], reference: list[dict], lat: dict) -> str:
    """results/<profile>/compare.md: every compression method and target (runs with `method`),
    beside the from-scratch structured models and the dense baseline of the same protocol."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for s in runs:
        rows[_compare_key(s)].append(s)
    refs: dict[str, list[dict]] = defaultdict(list)
    for s in reference:
        refs[s["model"] + ("_direct" if s.get("route") == "direct" else "")].append(s)
    for name, g in [*rows.items(), *refs.items()]:  # a row is one configuration: each seed once
        seen: dict[int, Path] = {}
        for s in g:
            if s["seed"] in seen:
                raise ValueError(f"compare.md row {name}: two runs with seed {s['seed']}: {seen[s['seed']]} and "
                                 f"{s.get('_dir')}; keep one configuration per method and target (move the other "
                                 f"out of the runs folder)")
            seen[s["seed"]] = s.get("_dir")
    dense_name, targets = COMPARE["dense"], COMPARE["targets"]
    dense = sorted(refs.get(dense_name, []), key=lambda s: s["seed"])
    shas = sorted({s.get("git_sha", "?") for s in runs + reference})
    epochs = sorted({s["epochs"] for s in runs})
    lines = [
        "# CIFAR-10: structured convolutions vs pruning and SVD at equal multiplications (generated)",
        "",
        f"Generated by `python -m src.tables` from {len(runs)} compression runs and {len(reference)} reference runs; "
        f"do not edit by hand. Code: {', '.join(shas)}.",
        "",
        f"Each method compresses the trained dense {dense_name} of the same seed (`model.init_from`) to a target "
        f"ratio of its multiplications (the 3x3 convs of the residual blocks; src/compress), then fine-tunes "
        f"{'/'.join(str(e) for e in epochs)} epochs with one recipe for all. structured: structured layers with (c, n) "
        "solved for the target, fine-tuned with the structural loss, projected and decomposed. "
        f"Accuracy: primary set ({_eval_sets(runs + reference)}), final epoch, mean +- std over seeds; vs dense: "
        "minus the dense baseline, paired by seed. Mults / params: the deployed model per image and its ratio "
        "to dense. Latency: the deployed architecture (structured ones also with their eager deploy plan, "
        "\"plan:\", per layer the fastest exact form measured at that batch, src/deploy) "
        + (f"({lat.get('setup', '?')}), ms per batch and ratio to dense" if lat else
           "(not measured yet: `python -m experiments.compare_latency` on a quiet machine)") + ".",
        "",
        "| method | target | seeds | accuracy | vs dense | official exact | official JPEG | mults | params "
        "| latency b64 | latency b1 | code |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def line(method: str, target: str, g: list[dict], name: str) -> str:
        g = sorted(g, key=lambda s: s["seed"])
        first = g[0]
        acc = "test_acc_decomposed"
        base_mults = first["mults_dense"] if not first.get("method") else None
        ratio = (first["mults_decomposed"] / base_mults) if base_mults else first.get("achieved_mults_ratio")
        dense_params = dense[0]["params_dense"] if dense else first["params_dense"]
        commits = _code_cell(_commits(g))
        measured = (lat.get("architectures") or {}).get(name)
        if measured and (measured["params"], measured["mults"]) != (first["params_decomposed"], first["mults_decomposed"]):
            raise ValueError(f"the latency file measured {name} with {measured['params']:,} params and "
                             f"{measured['mults']:,} mults, but its runs ({first.get('_dir', name)}) deploy "
                             f"{first['params_decomposed']:,} / {first['mults_decomposed']:,}: another architecture. "
                             f"Re-measure it (python -m experiments.compare_latency) at the runs' code.")
        return (f"| {method} | {target} | {len(g)} | {_mean_std([s[acc] for s in g])} | {_gap(g, dense, acc)} "
                f"| {_mean_std([s.get('official_test_acc_exact') for s in g])} "
                f"| {_mean_std([s.get('official_test_acc_jpeg') for s in g])} "
                f"| {_si(first['mults_decomposed'])} ({'-' if ratio is None else f'{ratio:.2f}x'}) "
                f"| {first['params_decomposed']:,} ({first['params_decomposed'] / dense_params:.2f}x) "
                f"| {_latency(lat, name, 64)} | {_latency(lat, name, 1)} | {commits} |")

    if dense:
        lines.append(line(f"dense ({dense_name})", "-", dense, dense_name))
    for target, name in targets.items():
        if refs.get(name):
            lines.append(line("structured, from scratch", target.upper(), refs[name], name))
        for key in sorted(k for k in rows if k.endswith(f"_{target}")):
            lines.append(line(rows[key][0]["method"], target.upper(), rows[key], key))
    others = sorted(k for k in rows if not k.endswith(tuple(f"_{t}" for t in targets)))
    for key in others:
        lines.append(line(rows[key][0]["method"], f"{rows[key][0]['target_mults_ratio']:g}", rows[key], key))
    lines += _verdict(rows, refs, dense, lat)
    lines += _starting_points(runs, dense)
    named = [f"{t.upper()} = {'the mults ratio of ' if i == 0 else 'that of '}{m}"
             + (f" (decomposed) to {dense_name}" if i == 0 else "") for i, (t, m) in enumerate(targets.items())]
    lines += ["", f"Targets: {', '.join(named)}; each method meets its target within 2 % (`achieved_mults_ratio` "
              "in summary.json).",
              "", "Plots: `compare_acc_vs_macs.png`, `compare_acc_vs_latency.png`.", "",
              "Runs (fine-tuning time over all epochs, resumed ones included): " + "; ".join(
                  f"{_compare_key(s)} seed {s['seed']}: {(s.get('train_time_s') or s['wall_time_s']) / 60:.1f} min"
                  f"{' (resumed)' if s.get('resumed') else ''}, from {s.get('init_from', '?')}"
                  for k in sorted(rows) for s in sorted(rows[k], key=lambda s: s["seed"])) + "."]
    return "\n".join(lines) + "\n"


