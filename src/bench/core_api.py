"""Core-API speed check: ``decompose(project(model))`` with nothing else imported, against the same
with the deploy package imported (issue 27, section 2).

    python -m src.bench.core_api [--threads 2] [--reps 30] [--warmup 5] [--min-time 2] [--pairs 3]

For each row (struct_resnet56_a vs resnet56 at batch 64, struct_resnet50_a vs resnet50 at batch
8, struct_resnet56_a vs resnet56 at batch 1) it prints decomposed / dense: the ratio of the
medians of interleaved forwards (src/timer.py) of the decomposed structured model and the dense
one, eager PyTorch, channels_last, inference mode, random weights, `--threads` intra-op threads,
the default allocator (nothing set). Each measurement runs in a child process of this command:
"core" children import torch, src.models and src.structured only (the child checks that
src.deploy was never imported), "deploy" children import src.deploy first. `--pairs` core /
deploy child pairs run alternately; the table shows each ratio's median over them and its range.
A script, not a test: it asserts nothing about speed, and its figures mean something only on a
quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# (structured model, dense model, batch)
ROWS = (("struct_resnet56_a", "resnet56", 64), ("struct_resnet50_a", "resnet50", 8),
        ("struct_resnet56_a", "resnet56", 1))
MODES = ("core", "deploy")


def measure(mode: str, threads: int, reps: int, warmup: int, min_time: float, rows=ROWS) -> list[dict]:
    """In this process: per row, the median seconds of the dense and the decomposed model's
    forward, interleaved. `mode` "deploy" imports src.deploy first; "core" must never import it."""
    if mode == "deploy":
        import src.deploy  # noqa: F401
    import torch

    from src.models import create_model, get_entry
    from src.structured import decompose, get_sum_pool_policy, project
    from src.timer import time_interleaved

    torch.set_num_threads(threads)
    cl = torch.channels_last
    out = []
    for struct, dense_name, batch in rows:
        torch.manual_seed(0)
        dense = create_model(dense_name).eval().to(memory_format=cl)
        dec = decompose(project(create_model(struct).eval())).eval().to(memory_format=cl)
        x = torch.randn(batch, *get_entry(dense_name).input_size).contiguous(memory_format=cl)
        with torch.inference_mode():
            t_dense, t_dec = time_interleaved([lambda: dense(x), lambda: dec(x)], reps=reps, warmup=warmup,
                                              min_time=min_time)
        out.append({"struct": struct, "dense": dense_name, "batch": batch, "dense_s": t_dense, "dec_s": t_dec})
    if mode == "core" and "src.deploy" in sys.modules:
        raise RuntimeError("core_api: the core-only measurement imported src.deploy")
    return [dict(r, policy=repr(get_sum_pool_policy())) for r in out]


def _child(mode: str, args: argparse.Namespace) -> list[dict]:
    cmd = [sys.executable, "-m", "src.bench.core_api", "--child", mode, "--threads", str(args.threads),
           "--reps", str(args.reps), "--warmup", str(args.warmup), "--min-time", str(args.min_time)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"core_api: the {mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[list[dict]]], args: argparse.Namespace) -> str:
    """The markdown table: per row and mode, the median decomposed / dense ratio over the child
    processes, with its range."""
    lines = [f"Core API vs deploy imported: decomposed / dense, eager, channels_last, {args.threads} threads, "
             f"default allocator, interleaved medians ({args.reps}+ reps, {args.pairs} process pair(s))", "",
             "| structured | dense | batch | core API alone | with src.deploy imported |",
             "|---|---|---:|---:|---:|"]
    for i, (struct, dense, batch) in enumerate(ROWS):
        cells = []
        for mode in MODES:
            ratios = sorted(run[i]["dec_s"] / run[i]["dense_s"] for run in results[mode])
            span = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            cells.append(f"{statistics.median(ratios):.2f}{span}")
        lines.append(f"| {struct} | {dense} | {batch} | {cells[0]} | {cells[1]} |")
    policies = {mode: {r["policy"] for run in results[mode] for r in run} for mode in MODES}
    lines += ["", f"sum-pool policy: core alone {sorted(policies['core'])}, "
                  f"with src.deploy {sorted(policies['deploy'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m src.bench.core_api", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--reps", type=int, default=30, help="interleaved rounds per row, at least (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default 5)")
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="keep timing until each model has run this many seconds (default 2)")
    ap.add_argument("--pairs", type=int, default=3, help="core / deploy child-process pairs, alternated (default 3)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.threads, args.reps, args.warmup, args.min_time)))
        return
    results: dict[str, list[list[dict]]] = {mode: [] for mode in MODES}
    for _ in range(args.pairs):
        for mode in MODES:
            results[mode].append(_child(mode, args))
    print(report(results, args))


if __name__ == "__main__":
    main()
