"""Core benchmark: (a) structural-loss overhead on a ResNet-56 training step, (b) sum-pool +
small conv against the dense conv it replaces, per layer, NCHW and channels_last.

    python -m src.bench.core [--threads 2] [--reps 20] [--malloc default|tuned] [--quick]
                             [--out results/bench_core.md] [--allow-dirty]

Everything is measured side by side in this process (see src/bench/timing.py) and printed as
markdown (and written to --out when given, headed by the code's git commit); no numbers are
asserted. The measurements here return data (:class:`LayerRow`, :class:`LossOverhead`);
src/bench/report.py renders them. Into the repository's results/ it writes only from committed
code (src/provenance.py): with uncommitted changes to tracked files it refuses before timing
anything, unless --allow-dirty.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and any(a in ("--malloc=tuned", "tuned") for a in sys.argv[1:]):
    # with --malloc tuned, transparent huge pages for PyTorch's CPU allocator, as in `python -m
    # src.bench`: read once by c10 when torch starts, so set before torch is imported, and only
    # when run as a script
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from src import provenance  # noqa: E402
from src.models.cifar_resnet import cifar_resnet  # noqa: E402
from src.structured import StructuredConv2d, complexity, decompose, structural_loss, structurize  # noqa: E402

from . import report  # noqa: E402
from .records import LayerRow, LossOverhead  # noqa: E402,F401  (re-exported)
from .timing import (  # noqa: E402
    configure_allocator,
    huge_pages_label,
    machine_label,
    seeded,
    time_interleaved,
    torch_threads,
)

# (C, H = W, batch): CIFAR stages, then ImageNet ResNet stages
LAYERS = [(16, 32, 32), (32, 16, 32), (64, 8, 32), (64, 56, 4), (128, 28, 4), (256, 14, 4), (512, 7, 4)]


def measure_loss_overhead(batch: int, reps: int, lam: float = 1e-2) -> LossOverhead:
    with seeded(0):
        return _measure_loss_overhead(batch, reps, lam)


def _measure_loss_overhead(batch: int, reps: int, lam: float) -> LossOverhead:
    model = cifar_resnet(56)
    structurize(model, [{"kernel_size": 3, "c": 0.5, "n": 2}], exclude=["conv1"])
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    n_layers = sum(isinstance(m, StructuredConv2d) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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
    return LossOverhead(batch, n_layers, plain, reg, only)


def _measure_layer(C: int, hw: int, batch: int, c: int, reps: int) -> list[LayerRow]:
    layer = StructuredConv2d(C, C, 3, padding=1, bias=False, inner_channels=c, inner_kernel_size=2)
    layer.project_()
    dense = nn.Conv2d(C, C, 3, padding=1, bias=False)
    dense.weight.data.copy_(layer.weight.data)
    dec = decompose(layer)
    cost = complexity(layer, (C, hw, hw))
    mac_ratio = cost.mults_decomposed / cost.mults
    rows = []
    for fmt in ("NCHW", "channels_last"):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        x = torch.randn(batch, C, hw, hw).to(memory_format=mf)
        d, p = dense.to(memory_format=mf), dec.to(memory_format=mf)
        with torch.inference_mode():
            t_dense, t_dec = time_interleaved([lambda: d(x), lambda: p(x)], reps=reps, min_time=0.2)
        rows.append(LayerRow(C, hw, batch, c, fmt, t_dense, t_dec, mac_ratio))
    return rows


def measure_layers(reps: int, layers=LAYERS) -> list[LayerRow]:
    """Each (C, H = W, batch) of `layers` at c = C and c = C/2, NCHW and channels_last."""
    rows = []
    for C, hw, batch in layers:
        for c in (C, C // 2):
            with seeded(0):
                rows += _measure_layer(C, hw, batch, c, reps)
    return rows


def layer_table(reps: int, layers=LAYERS) -> str:
    """The per-layer table (b), measured and rendered."""
    return report.core_layer_table(measure_layers(reps, layers))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per candidate (default 20)")
    ap.add_argument("--batch", type=int, default=128, help="ResNet-56 training batch")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="default",
                    help="allocator setting (default: glibc as a user has it; see "
                         "src/bench/timing.py:configure_allocator)")
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
    allocator = f"{configure_allocator(args.malloc)}; {huge_pages_label()}"  # process-wide (timing.py)
    reps = 3 if args.quick else args.reps
    with torch_threads(args.threads):
        info = report.RunInfo(
            command=f"python -m src.bench.core {' '.join(argv if argv is not None else sys.argv[1:])}",
            when=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            sha=sha, machine=machine_label(), allocator=allocator)
        layers = measure_layers(reps, LAYERS[:1] if args.quick else LAYERS)
        overhead = measure_loss_overhead(16 if args.quick else args.batch, max(3, reps // 2))
    text = report.core_report(info, layers, overhead)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
