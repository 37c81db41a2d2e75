"""Measured CPU latency of the comparison's deployed architectures: ``python -m experiments.compare_latency``.

For the dense resnet20, the from-scratch structured models (struct_resnet20_a / _b, projected and
decomposed) and every compression method at targets A and B (src/compress, the ratios of
conf/exp/cifar10/compress/<method>_<target>.yaml; ``structured`` projected and decomposed), the
latency of one forward pass at batch 64 and batch 1: eager PyTorch, channels_last,
``torch.no_grad``, 2 threads, glibc's default allocator (the process as a user has it), all
models timed interleaved in one process (3 rounds; each model's time is its best round's median,
its ratio to dense the median of the per-round ratios). Latency depends on the architecture, not on
the weights, so the models are built with seeded random weights (pruning keeps the same number of
filters whatever the weights). Writes ``results/medium/latency.json``, which ``src.tables`` reads
into ``compare.md``. Needs a quiet machine: time nothing while a training run or tests use the
cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from src.compress import METHODS, compress
from src.deploy.tuning import time_interleaved
from src.models import create_model
from src.provenance import DirtyTreeError, check_results_dir, git_sha
from src.structured import decompose, project

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("a", "b")
ROUNDS = 3


def target_ratio(method: str, target: str) -> float:
    cfg = yaml.safe_load((ROOT / "conf" / "exp" / "cifar10" / "compress" / f"{method}_{target}.yaml").read_text())
    return float(cfg["model"]["compress"]["mults_ratio"])


def deployed_models(methods=METHODS, targets=TARGETS) -> dict[str, torch.nn.Module]:
    """name -> the deployed (eval, channels_last) architecture; 'resnet20' first."""
    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    models = {"resnet20": dense}
    for t in targets:
        models[f"struct_resnet20_{t}"] = decompose(project(create_model(f"struct_resnet20_{t}").eval()))
        for m in methods:
            small = compress(dense, m, target_ratio(m, t), (3, 32, 32)).eval()
            models[f"{m}_{t}"] = decompose(project(small)) if m == "structured" else small
    return {k: v.to(memory_format=torch.channels_last).eval() for k, v in models.items()}


def measure(models: dict[str, torch.nn.Module], batches=(64, 1), reps: int = 20, min_time: float = 0.5,
            threads: int = 2) -> dict[str, dict]:
    torch.set_num_threads(threads)
    out: dict[str, dict] = {name: {} for name in models}
    names = list(models)
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        fns = []
        for name in names:
            fns.append(lambda m=models[name]: m(x))
        with torch.no_grad():
            rounds = [time_interleaved(fns, reps=reps, min_time=min_time) for _ in range(ROUNDS)]
        for i, name in enumerate(names):
            best = min(r[i] for r in rounds)
            ratio = statistics.median(r[i] / r[0] for r in rounds)
            out[name][f"batch{batch}"] = {"ms": round(1e3 * best, 3), "ratio": round(ratio, 3)}
            print(f"{name:>20} batch {batch:>3}: {1e3 * best:8.2f} ms  {ratio:.2f}x dense", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.compare_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/medium/latency.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per model and round, at least")
    ap.add_argument("--quick", action="store_true", help="seconds: batches 2 and 1, few repetitions (tests)")
    ap.add_argument("--allow-dirty", action="store_true", help="write into results/ from a tree with uncommitted changes")
    args = ap.parse_args(argv)
    try:
        check_results_dir(args.out.parent, args.allow_dirty)
    except DirtyTreeError as e:
        sys.exit(f"error: {e}")
    batches, reps, min_time = ((2, 1), 2, 0.0) if args.quick else ((64, 1), args.reps, args.min_time)
    results = measure(deployed_models(), batches, reps, min_time, args.threads)
    doc = {"setup": f"eager channels_last, {args.threads} threads, default allocator, interleaved, "
                    f"best of {ROUNDS} rounds' medians; batches {', '.join(map(str, batches))}",
           "git_sha": git_sha(), "torch": torch.__version__,
           "date": datetime.date.today().isoformat(), "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
