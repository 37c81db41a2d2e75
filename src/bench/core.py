"""Core benchmark: (a) structural-loss overhead on a ResNet-56 training step, (b) sum-pool +
small conv against the dense conv it replaces, per layer, NCHW and channels_last.

    python -m src.bench.core [--threads 2] [--reps 20] [--quick] [--out results/bench_core.md]
                             [--allow-dirty]

Everything is measured side by side in this process (see src/bench/timing.py) and printed as
markdown (and written to --out when given, headed by the code's git commit); no numbers are
asserted. Into the repository's results/ it writes only from committed code (src/provenance.py):
with uncommitted changes to tracked files it refuses before timing anything, unless --allow-dirty.
"""

from __future__ import annotations

import argparse
import os
import sys

# transparent huge pages for PyTorch's CPU allocator, as in `python -m src.bench` (effective only
# when this module runs before torch is first imported, i.e. as `python -m src.bench.core`)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from src import provenance  # noqa: E402
from src.models.cifar_resnet import cifar_resnet  # noqa: E402
from src.structured import StructuredConv2d, complexity, decompose, structural_loss, structurize  # noqa: E402

from .timing import configure_allocator, huge_pages_label, machine_label, time_interleaved  # noqa: E402


def loss_overhead(batch: int, reps: int, lam: float = 1e-2) -> str:
    torch.manual_seed(0)
    model = cifar_resnet(56)
    structurize(model, [{"kernel_size": 3, "c": 0.5, "n": 2}], exclude=["conv1"])
    n_layers = sum(isinstance(m, StructuredConv2d) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    model = model.to(memory_format=torch.channels_last).train()

    def step(with_reg: bool):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if with_reg:
            loss = loss + lam * structural_loss(model)
        loss.backward()
        opt.step()

    def reg_only():
        opt.zero_grad(set_to_none=True)
        (lam * structural_loss(model)).backward()

    plain, reg, only = time_interleaved([lambda: step(False), lambda: step(True), reg_only], reps=reps)
    return "\n".join([
        f"### (a) structural_loss overhead: CIFAR ResNet-56, {n_layers} structured 3x3 convs "
        f"(c = C/2, n = 2), batch {batch}, SGD step, channels_last",
        "",
        "| step | median ms | overhead |",
        "|---|---:|---:|",
        f"| task loss only | {plain * 1e3:.1f} | |",
        f"| task loss + lambda * structural_loss | {reg * 1e3:.1f} | {100 * (reg / plain - 1):+.1f} % |",
        f"| structural_loss forward + backward alone | {only * 1e3:.2f} | {100 * only / plain:.1f} % of the step |",
    ])


# (C, H = W, batch): CIFAR stages, then ImageNet ResNet stages
LAYERS = [(16, 32, 32), (32, 16, 32), (64, 8, 32), (64, 56, 4), (128, 28, 4), (256, 14, 4), (512, 7, 4)]


def layer_table(reps: int, layers=LAYERS) -> str:
    rows = [
        "### (b) one 3x3 conv (C -> C, stride 1, pad 1) vs SumPool + small conv (n = 2)",
        "",
        "| C | HxW | batch | c | format | dense ms | decomposed ms | time ratio | MAC ratio |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for C, hw, batch in layers:
        for c in (C, C // 2):
            torch.manual_seed(0)
            layer = StructuredConv2d(C, C, 3, padding=1, bias=False, inner_channels=c, inner_kernel_size=2)
            layer.project_()
            dense = nn.Conv2d(C, C, 3, padding=1, bias=False)
            dense.weight.data.copy_(layer.weight.data)
            dec = decompose(layer)
            cost = complexity(layer, (C, hw, hw))
            mac_ratio = cost.mults_decomposed / cost.mults
            for fmt in ("NCHW", "channels_last"):
                mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                x = torch.randn(batch, C, hw, hw).to(memory_format=mf)
                d, p = dense.to(memory_format=mf), dec.to(memory_format=mf)
                with torch.inference_mode():
                    t_dense, t_dec = time_interleaved([lambda: d(x), lambda: p(x)], reps=reps, min_time=0.2)
                rows.append(
                    f"| {C} | {hw}x{hw} | {batch} | {c} | {fmt} | {t_dense * 1e3:.3f} | {t_dec * 1e3:.3f} "
                    f"| {t_dec / t_dense:.2f} | {mac_ratio:.2f} |"
                )
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per candidate (default 20)")
    ap.add_argument("--batch", type=int, default=128, help="ResNet-56 training batch")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="allocator setting (see src/bench/timing.py:configure_allocator)")
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    ap.add_argument("--out", help="also write the report to this markdown file")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into results/ even with uncommitted changes (the header then names a -dirty sha)")
    args = ap.parse_args(argv)
    if args.out:
        try:  # before any timing: a refused report should not cost minutes
            provenance.check_results_dir(args.out, args.allow_dirty)
        except provenance.DirtyTreeError as e:
            ap.error(str(e))
    sha = provenance.git_sha()
    allocator = f"{configure_allocator(args.malloc)}; {huge_pages_label()}"
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else args.reps
    report = "\n\n".join([
        f"## Core benchmark\n\nMachine: {machine_label()}; {allocator}. Command: "
        f"`python -m src.bench.core {' '.join(argv if argv is not None else sys.argv[1:])}`; code at git "
        f"`{sha}`. "
        "Median of interleaved repetitions; time ratio = decomposed / dense.",
        layer_table(reps, LAYERS[:1] if args.quick else LAYERS),
        loss_overhead(16 if args.quick else args.batch, max(3, reps // 2)),
    ])
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
