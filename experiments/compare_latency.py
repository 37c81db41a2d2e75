"""Measured CPU latency of the comparison's deployed architectures: ``python -m experiments.compare_latency``.

For the dense resnet20, the from-scratch structured models (struct_resnet20_a / _b, projected and
decomposed) and every compression method at targets A and B (src/compress, the ratios of
conf/exp/cifar10/compress/<method>_<target>.yaml; ``structured`` projected and decomposed), the
latency of one forward pass at batch 64 and batch 1: eager PyTorch, channels_last,
``torch.no_grad``, 2 threads, glibc's default allocator (the process as a user has it), all
models timed interleaved in one process (3 rounds; each model's time is its best round's median,
its ratio to dense the median of the per-round ratios), in 3 fresh processes one after another
(``--processes``; with the default allocator a process's figures move by up to 0.15 in ratio),
keeping each figure's median and the ratio's range. Each structured model is also timed
deployed with its eager deploy plan (``<name>+plan``: src/deploy, per layer the fastest exact
form, measured at that batch on this machine; ``--no-plan`` skips them). Latency depends on the architecture, not on
the weights, so the models are built with seeded random weights (pruning keeps the same number of
filters whatever the weights). Writes ``results/medium/latency.json`` (with each architecture's
params and mults, which ``src.tables`` checks against the trained runs), which ``src.tables`` reads
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
from src.deploy import decompose_planned, plan_recompose, plan_summary
from src.deploy.tuning import time_interleaved
from src.models import create_model
from src.provenance import DirtyTreeError, check_results_dir, git_sha
from src.structured import complexity, decompose, project, structured_layers

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("a", "b")
ROUNDS = 3


def target_ratio(method: str, target: str) -> float:
    cfg = yaml.safe_load((ROOT / "conf" / "exp" / "cifar10" / "compress" / f"{method}_{target}.yaml").read_text())
    return float(cfg["model"]["compress"]["mults_ratio"])


def deployed_models(methods=METHODS, targets=TARGETS, sources: dict | None = None) -> dict[str, torch.nn.Module]:
    """name -> the deployed (eval, channels_last) architecture; 'resnet20' first. The projected
    train-form model of each structured entry goes into `sources` when given (for its deploy plan)."""
    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    models = {"resnet20": dense}
    structured = {}
    for t in targets:
        structured[f"struct_resnet20_{t}"] = project(create_model(f"struct_resnet20_{t}").eval())
        models[f"struct_resnet20_{t}"] = decompose(structured[f"struct_resnet20_{t}"])
        for m in methods:
            small = compress(dense, m, target_ratio(m, t), (3, 32, 32)).eval()
            if m == "structured":
                structured[f"{m}_{t}"] = project(small)
                small = decompose(structured[f"{m}_{t}"])
            models[f"{m}_{t}"] = small
    if sources is not None:
        sources.update({k: v.to(memory_format=torch.channels_last).eval() for k, v in structured.items()})
    return {k: v.to(memory_format=torch.channels_last).eval() for k, v in models.items()}


def architectures(models: dict[str, torch.nn.Module], sources: dict[str, torch.nn.Module]) -> dict[str, dict]:
    """name -> params of the deployed model and mults per image (src.structured.complexity of its
    train form: the counts a trained run's summary holds as params_decomposed / mults_decomposed)."""
    out = {}
    for name, model in models.items():
        train_form = sources.get(name, model)
        out[name] = {"params": sum(p.numel() for p in model.parameters()),
                     "mults": complexity(train_form, (3, 32, 32)).mults_decomposed}
    return out


def planned(sources: dict[str, torch.nn.Module], x: torch.Tensor, reps: int) -> dict[str, tuple[torch.nn.Module, str]]:
    """'<name>+plan' -> (the structured model deployed with its eager deploy plan measured at
    this input, src/deploy: per layer the fastest exact form; its plan in words)."""
    out = {}
    for name, model in sources.items():
        plan = plan_recompose(model, x, backend="eager", reps=reps)
        text = ", ".join(f"{n} {form}" for form, n in plan_summary(plan, sum(1 for _ in structured_layers(model))))
        out[f"{name}+plan"] = (decompose_planned(model, plan).eval().to(memory_format=torch.channels_last), text)
    return out


def measure(models: dict[str, torch.nn.Module], batches=(64, 1), reps: int = 20, min_time: float = 0.5,
            threads: int = 2, sources: dict[str, torch.nn.Module] | None = None) -> dict[str, dict]:
    """Per model and batch: ms per forward and ratio to the first model (dense), interleaved;
    with `sources`, also each structured model deployed with its eager plan measured at that batch."""
    torch.set_num_threads(threads)
    out: dict[str, dict] = {name: {} for name in models}
    for batch in batches:
        x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            plans = planned(sources, x, max(3, reps // 4)) if sources else {}
        batch_models = {**models, **{k: m for k, (m, _) in plans.items()}}
        names = list(batch_models)
        fns = [lambda m=batch_models[name]: m(x) for name in names]
        with torch.no_grad():
            rounds = [time_interleaved(fns, reps=reps, min_time=min_time) for _ in range(ROUNDS)]
        for i, name in enumerate(names):
            best = min(r[i] for r in rounds)
            ratio = statistics.median(r[i] / r[0] for r in rounds)
            out.setdefault(name, {})[f"batch{batch}"] = {"ms": round(1e3 * best, 3), "ratio": round(ratio, 3)}
            if name in plans:
                out[name][f"batch{batch}"]["plan"] = plans[name][1]
            print(f"{name:>25} batch {batch:>3}: {1e3 * best:8.2f} ms  {ratio:.2f}x dense"
                  + (f"  ({plans[name][1]})" if name in plans else ""), flush=True)
    return out


def _in_child(argv: list[str], i: int) -> dict:
    """The models' figures measured by a fresh process of this command (--processes 1)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="compare_latency_") as tmp:
        out = Path(tmp) / f"latency{i}.json"
        rest = [a for j, a in enumerate(argv) if a not in ("--processes", "--out", "--allow-dirty")
                and (j == 0 or argv[j - 1] not in ("--processes", "--out"))]
        print(f"process {i + 1}:", flush=True)
        subprocess.run([sys.executable, "-m", "experiments.compare_latency", *rest, "--processes", "1",
                        "--out", str(out), "--allow-dirty"], cwd=ROOT, check=True)
        return json.loads(out.read_text())["models"]


def merge_processes(runs: list[dict]) -> dict:
    """Per model and batch: the median ms and median ratio over the processes, the ratio's range
    ('ratio_range') and, for a planned model, each process's plan ('plans')."""
    merged: dict[str, dict] = {}
    for name in runs[0]:
        merged[name] = {}
        for batch in runs[0][name]:
            rows = [r[name][batch] for r in runs if batch in r.get(name, {})]
            ratios = [row["ratio"] for row in rows]
            entry = {"ms": round(statistics.median(row["ms"] for row in rows), 3),
                     "ratio": round(statistics.median(ratios), 3), "ratio_range": [min(ratios), max(ratios)]}
            if any("plan" in row for row in rows):
                entry["plans"] = [row.get("plan") for row in rows]
            merged[name][batch] = entry
    return merged


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.compare_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/medium/latency.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per model and round, at least")
    ap.add_argument("--no-plan", action="store_true",
                    help="skip the structured models deployed with their eager deploy plan ('<name>+plan')")
    ap.add_argument("--processes", type=int, default=3, metavar="N",
                    help="measure in N fresh processes one after another and keep each figure's median (default 3; "
                         "a process's allocator state moves its figures, so one process is not enough)")
    ap.add_argument("--quick", action="store_true", help="seconds: batches 2 and 1, few repetitions (tests)")
    ap.add_argument("--allow-dirty", action="store_true", help="write into results/ from a tree with uncommitted changes")
    args = ap.parse_args(argv)
    try:
        check_results_dir(args.out.parent, args.allow_dirty)
    except DirtyTreeError as e:
        sys.exit(f"error: {e}")
    sha = git_sha()  # the code measured is the code at the start (later edits of the tree do not change it)
    batches, reps, min_time = ((2, 1), 2, 0.0) if args.quick else ((64, 1), args.reps, args.min_time)
    sources: dict = {}
    models = deployed_models(sources=sources)
    arch = architectures(models, sources)
    if args.processes > 1:  # each in a fresh process: with the default allocator, a process's figures vary
        del models, sources
        results = merge_processes([_in_child(argv or sys.argv[1:], i) for i in range(args.processes)])
    else:
        results = measure(models, batches, reps, min_time, args.threads, sources=None if args.no_plan else sources)
    spread = (f"; median over {args.processes} processes (min-max of the ratio in brackets)"
              if args.processes > 1 else "")
    doc = {"setup": f"eager channels_last, {args.threads} threads, default allocator, interleaved, "
                    f"best of {ROUNDS} rounds' medians; batches {', '.join(map(str, batches))}{spread}",
           "git_sha": sha, "torch": torch.__version__,
           "date": datetime.date.today().isoformat(), "architectures": arch, "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
