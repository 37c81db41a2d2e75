"""Lambda sweep for the CIFAR default: ``python -m experiments.lambda_sweep --data DIR``.

Trains struct_resnet20_b (the aggressive variant: the most sensitive to lambda) on the first
TRAIN_SUBSET CIFAR-10 training images for EPOCHS epochs with each lambda (0 = plain training,
then projection), evaluates on the full test set, and writes ``results/lambda_sweep.md``: final
structural residual and the test accuracy as trained, after projection (before and after
BatchNorm recalibration) and after decomposition. Measured figures only; the table is
regenerated from the runs' summary.json files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

LAMBDAS = [0.0, 0.01, 0.1, 0.5, 2.0]
MODEL, TRAIN_SUBSET, EPOCHS = "struct_resnet20_b", 10_000, 4


def run_dir(runs: Path, lam: float) -> Path:
    return runs / "lambda_sweep" / f"lam{lam:g}"


def table(runs: Path) -> str:
    rows = []
    for lam in LAMBDAS:
        path = run_dir(runs, lam) / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        rows.append(
            f"| {lam:g} | {s['structural_residual_final']:.2e} | {s['structural_residual_mean_final']:.2e} "
            f"| {s['test_acc_dense']:.2f} | {s['test_acc_projected_raw']:.2f} | {s['test_acc_projected']:.2f} "
            f"| {s['test_acc_decomposed']:.2f} | {s['test_acc_decomposed'] - s['test_acc_dense']:+.2f} |"
        )
    first = json.loads((run_dir(runs, LAMBDAS[0]) / "summary.json").read_text()) if rows else {}
    return "\n".join([
        "# Lambda sweep (generated)",
        "",
        f"`python -m experiments.lambda_sweep`: {MODEL} on the first {TRAIN_SUBSET:,} CIFAR-10 training images, "
        f"{EPOCHS} epochs (SGD lr 0.1 cosine, lambda ramped over the first epoch), seed 0, evaluated on the full "
        f"10,000-image test set. Machine: {first.get('device', '?')}, {first.get('threads', '?')} threads, "
        f"torch {first.get('torch', '?')}; code {first.get('git_sha', '?')}.",
        "",
        "Residual: relative structural residual ||(I - AA^+)W|| / ||W|| at the end of training (max and mean "
        "over layers). Accuracies in %: trained (full kernels), projected before / after BatchNorm "
        "recalibration (50 training batches), decomposed (deploy model).",
        "",
        "| lambda | residual (max) | residual (mean) | trained | projected, raw | projected, BN recal. | decomposed | decomposed - trained |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]) + "\n"


def main(argv=None) -> None:
    from experiments.reproduce import collect
    from src.provenance import check_results_dir

    ap = argparse.ArgumentParser(prog="python -m experiments.lambda_sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CIFAR-10 root (not needed with --table-only)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="runs go to <runs>/lambda_sweep/lam<value>")
    ap.add_argument("--collect", type=Path, default=Path("results/lambda_sweep_runs"),
                    help="each finished run's logs are copied to <collect>/lambda_sweep/lam<value>; the table is "
                         "made from these copies (default: results/lambda_sweep_runs)")
    ap.add_argument("--out", type=Path, default=Path("results/lambda_sweep.md"))
    ap.add_argument("--table-only", action="store_true", help="regenerate the table from the collected logs")
    ap.add_argument("--allow-dirty", action="store_true", help="write into results/ from uncommitted code")
    args = ap.parse_args(argv)
    check_results_dir(args.out.parent, args.allow_dirty)
    if args.table_only:
        args.out.write_text(table(args.collect))
        print(f"wrote {args.out}")
        return
    if not args.data:
        ap.error("--data is required to run the sweep")
    for lam in LAMBDAS:
        cmd = [sys.executable, "-m", "src.train", f"+exp=cifar10/{MODEL}", f"data.root={args.data}",
               f"data.train_subset={TRAIN_SUBSET}", f"trainer.max_epochs={EPOCHS}", f"structure.lam={lam}",
               "trainer.progress_bar=none", "model.channels_last=true", "profile=lambda_sweep", f"tag=_lam{lam:g}",
               f"hydra.run.dir={run_dir(args.runs, lam)}"]
        print(" ".join(cmd[2:]), flush=True)
        code = subprocess.run(cmd).returncode
        if code:
            sys.exit(code)
        collect(run_dir(args.runs, lam), run_dir(args.collect, lam))
    text = table(args.collect)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
