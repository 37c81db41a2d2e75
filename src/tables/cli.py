"""Result tables and plots regenerated from logged runs: ``python -m src.tables --runs DIR --out DIR``.

`write_tables` writes, per dataset under the runs folder, ``<dataset>.md`` and its plots (with the
gap against training length where one is asked for: length.py), and ``compare.md`` with its plots
where there are compression runs; `main` is the command line, which also writes the README's results
summary (readme.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.provenance import check_results_dir

from .claims import COMPARE
from .compare import LATENCY_FILE, compare_table
from .dataset import dataset_table
from .length import default_folders, section, study
from .load import group_runs, load_runs
from .plots import plot_acc_vs_macs, plot_compare, plot_gap_vs_epochs, plot_training
from .readme import write_summary


def write_tables(runs_dir: Path, out_dir: Path, allow_dirty: bool = True,
                 length_runs: list[Path] | None = None) -> list[Path]:
    """Write the tables and plots of every dataset under `runs_dir` into `out_dir`. Into the
    repository's results/ only from a clean tree unless `allow_dirty` (the command line's default
    is to refuse). `length_runs`: the folders whose runs join `runs_dir`'s in the gap against training
    length (an empty list: `runs_dir`'s alone); None: claims.yaml's `gap_vs_length.with` for this
    results folder (results/long: results/medium/runs and results/medium/gap/runs), where it names any,
    else no such section."""
    check_results_dir(out_dir, allow_dirty)
    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no summary.json under {runs_dir}: run `python -m src.train` or `make reproduce-cifar` first")
    compressed = [s for s in runs if s.get("method")]  # compression baselines: compare.md, not the main table
    runs = [s for s in runs if not s.get("method")]
    groups = group_runs(runs)
    folders = default_folders(runs_dir) if length_runs is None else list(length_runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in sorted({k[0] for k in groups}):
        md = out_dir / f"{dataset}.md"
        gap_plot = out_dir / f"{dataset}_gap_vs_epochs.png"
        st = None if folders is None else study(dataset, runs, folders, runs_dir)
        md.write_text(dataset_table(dataset, groups, None if st is None else section(st, gap_plot.name)))
        plot_acc_vs_macs(dataset, groups, out_dir / f"{dataset}_acc_vs_macs.png")
        plot_training(dataset, groups, out_dir / f"{dataset}_training.png")
        written += [md, out_dir / f"{dataset}_acc_vs_macs.png", out_dir / f"{dataset}_training.png"]
        if st is not None:
            plot_gap_vs_epochs(st, gap_plot)
            written.append(gap_plot)
    if compressed:
        lat_path = Path(runs_dir).parent / LATENCY_FILE
        lat = json.loads(lat_path.read_text()) if lat_path.exists() else {}
        reference = [s for s in runs if s.get("dataset") == COMPARE["dataset"]
                     and {s.get("eval_set")} == {c.get("eval_set") for c in compressed[:1]}]
        md = out_dir / "compare.md"
        md.write_text(compare_table(compressed, reference, lat))
        written += [md, *plot_compare(compressed, reference, lat, out_dir)]
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m src.tables", description=__doc__.split("\n\n")[0].replace("``", "`"),
        epilog="Rows group runs by configuration (src/runs.py: every result-changing setting but the seed); a "
               "row's seeds differ in the seed only, and rows whose runs come from different commits are "
               "flagged. The claims and the models they compare: src/tables/claims.yaml. "
               "Examples: python -m src.tables --runs results/quick/runs --out results/quick; "
               "python -m src.tables --runs results/long/runs --out results/long (with the gap against "
               "training length, reading results/medium/runs and results/medium/gap/runs too); "
               "python -m src.tables --summary README.md")
    ap.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                    help="folder searched recursively for summary.json files (with metrics.csv beside each); "
                         "default: runs")
    ap.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                    help="where <dataset>.md and its plots are written; default: results")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into the repository's results/ even when the code has uncommitted changes "
                         "(refused by default: results/ holds what a commit regenerates)")
    ap.add_argument("--length-runs", type=Path, nargs="*", metavar="DIR",
                    help="runs folders whose runs join --runs' in a 'Gap against training length' section and "
                         "<dataset>_gap_vs_epochs.png (paired gaps per length on --runs' primary split, the fit "
                         "g_inf + b / E, its bootstrap, its extrapolation); given without a folder: --runs' runs "
                         "alone. Default: the folders src/tables/claims.yaml (gap_vs_length.with) names for the "
                         "results folder, relative to results/ (results/long/runs: medium/runs and "
                         "medium/gap/runs); none for other folders: no section")
    ap.add_argument("--summary", type=Path, metavar="FILE",
                    help="instead of tables: write the results summary (one line per claim, with its evidence "
                         "and profile, from the committed tables under results/) into FILE between the lines "
                         "<!-- results-summary:start --> and <!-- results-summary:end --> (e.g. README.md)")
    ap.add_argument("--quiet", action="store_true", help="print only the paths written, not the tables")
    args = ap.parse_args(argv)
    try:
        if args.summary is not None:
            write_summary(args.summary)
            print(f"wrote the results summary into {args.summary}")
            return
        written = write_tables(args.runs, args.out, allow_dirty=args.allow_dirty, length_runs=args.length_runs)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    for path in written:
        print(f"wrote {path}")
        if path.suffix == ".md" and not args.quiet:
            print(path.read_text())

