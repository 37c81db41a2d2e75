"""Model-level speed benchmark: dense baselines against their decomposed structured variants.

    python -m src.bench [--models resnet56 resnet50] [--variants a b] [--batches 1 128]
                        [--backends eager eager_cl compile onnxruntime] [--no-plan]
                        [--sections models layers training profile] [--threads 2] [--reps 10]
                        [--min-time 0.5] [--malloc tuned] [--quick] [--out results/speed.md]
                        [--allow-dirty]

Models are built as the registry builds them, with random weights: the dense baseline by
``create_model(name)``, the structured one by ``create_model(f"struct_{name}_{v}")``, then
``project`` and ``decompose``; nothing is copied between them. For each (model, batch, backend)
the dense model and every decomposed variant are timed interleaved in this process, after
warm-up (src/bench/timing.py), in three rounds; a row gives each candidate's median latency in
its fastest round (a burst of other processes on a shared CPU then spoils one round, not the
row), the throughput, the measured time ratio (decomposed / dense) and, beside it, the MAC
ratio (the ideal). Backends:

- ``eager`` (NCHW) and ``eager_cl`` (channels_last): plain PyTorch under ``torch.no_grad``.
  With ``eager_cl`` each variant is also timed with its deploy plan ("a+plan"): the layers
  that :func:`src.deploy.plan_recompose` measured faster in another exact form, at this
  batch, run in it (``decompose(..., recompose=plan)``): "dense" = one conv with the structured
  kernel, "spatial" = sum-pool over space only, then an n x n conv over all channels.
- ``compile``: ``torch.compile`` (inductor, freezing on: weights constant-folded, as for CPU
  inference), channels_last; skipped with the reason if compilation fails here.
- ``onnxruntime``: the model exported by :func:`src.export.export_onnx`, CPU provider, full
  graph optimisation, ``intra_op_num_threads`` = the thread count, no spin-waiting (sessions
  timed in turn would otherwise spin on each other's cores).
- ``cuda``, ``cuda_bf16`` (autocast), ``cuda_compile``: only when a GPU is present.

Further sections: one 3x3 conv against its decomposition for C = 16..512
(:func:`src.bench.core.layer_table`); training steps (the structural loss's overhead, dense vs
structured images/s); and a profile of the target pairs (where the time goes, per layer kind).
The report (markdown) is printed and written to --out, labelled with the machine, thread count,
torch version, allocator setting, the code's git commit and the load average (other processes
share this CPU; the interleaving keeps ratios comparable, absolute times are not). Into the
repository's results/ it writes only from committed code (src/provenance.py): with uncommitted
changes to tracked files it refuses before timing anything, unless --allow-dirty.

Layout: this module is the command line; src/bench/measure.py measures (returning data:
``Row``, ``Skipped``, ``TrainingRow``, ``Profile``), src/bench/backends.py holds one unit per
backend (``session()`` + ``prepare(model, x)``), src/bench/report.py renders markdown, and
src/bench/timing.py the settings: the thread count, inductor freezing and the RNG are set in
``with`` blocks and restored after them; the allocator setting (mallopt) is process-wide.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Sequence

from src import provenance

from . import core, measure, report
from .backends import CPU_BACKENDS, CUDA_BACKENDS, default_backends, make_backend
from .measure import ROUNDS, Row, Skipped
from .timing import configure_allocator, huge_pages_label, machine_label, torch_threads

# dense name -> batch sizes (CIFAR models at 32x32, ImageNet models at 224x224)
SUITE = {
    "resnet20": (1, 128), "resnet56": (1, 128), "cifar_mobilenet_v2": (1, 128),
    "resnet18": (1, 16), "resnet50": (1, 16), "mobilenet_v2": (1, 16),
}
SECTIONS = ("models", "layers", "training", "profile")
# (name, batch, max time ratio): the targets, eager channels_last, variant a
TARGETS = [("resnet56", 128, 0.80), ("resnet56", 1, 1.00), ("resnet50", 16, 0.80)]
# (name, batch) of the training-speed section, and its structural-loss weight
TRAINING = [("resnet56", 128), ("resnet50", 16)]
TRAINING_LAMBDA = 1e-2


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(item: Row | Skipped) -> None:
    if isinstance(item, Skipped):
        _log(f"  skipped: {report.skipped_line(item)}")
    else:
        _log("  " + report.row_line(item))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(SUITE), help="dense names (default: all six)")
    ap.add_argument("--variants", nargs="+", choices=("a", "b"), help="default: a b")
    ap.add_argument("--batches", nargs="+", type=int, help="override each model's batch sizes")
    ap.add_argument("--backends", nargs="+", choices=CPU_BACKENDS + CUDA_BACKENDS,
                    help="default: all CPU backends, plus the CUDA ones when a GPU is present")
    ap.add_argument("--no-plan", dest="plan", action="store_false", help="skip the per-layer deploy plan rows")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10, help="minimum interleaved repetitions per row")
    ap.add_argument("--min-time", type=float, default=0.5,
                    help="minimum seconds timed per candidate in each of the row's rounds")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="allocator setting (see src/bench/timing.py:configure_allocator)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run in seconds: resnet20, variant a, batch 2, eager_cl, few repetitions")
    ap.add_argument("--out", default="results/speed.md", help="report file (default: results/speed.md)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into results/ even with uncommitted changes (the header then names a -dirty sha)")
    return ap


def _sections(args: argparse.Namespace) -> list[str]:
    """Measure the requested sections and render each (under the caller's settings)."""
    sections = []
    if "models" in args.sections:
        backends = [make_backend(n, threads=args.threads) for n in default_backends(args.backends)]
        rows: list[Row] = []
        skipped: list[Skipped] = []
        for name in args.models or list(SUITE):
            for batch in args.batches or SUITE[name]:
                _log(f"{name}, batch {batch}")
                r, s = measure.measure_model(name, batch, args.variants or ["a", "b"], backends, reps=args.reps,
                                             min_time=args.min_time, plan=args.plan, progress=_progress)
                rows += r
                skipped += s
        sections += [report.models_section(rows, skipped), report.targets_section(rows, TARGETS)]
    if "layers" in args.sections:
        _log("layers")
        sections.append(report.layers_section(core.measure_layers(args.reps, core.LAYERS[:1] if args.quick
                                                                  else core.LAYERS)))
    if "training" in args.sections:
        _log("training")
        training = []
        for name, batch in [("resnet20", 8)] if args.quick else TRAINING:
            training.append(measure.measure_training(name, batch, max(2, args.reps // 2), TRAINING_LAMBDA))
            _log("  " + report.training_line(training[-1]))
        sections.append(report.training_section(training, TRAINING_LAMBDA))
    if "profile" in args.sections:
        _log("profile")
        if args.quick:
            pairs = [("resnet20", 2)]
        elif args.models or args.batches:  # what was asked for, e.g. --models resnet56 --batches 1
            pairs = [(n, b) for n in (args.models or list(SUITE)) for b in (args.batches or SUITE[n])]
        else:
            pairs = [(n, b) for n, b, _ in TARGETS if b > 1]
        profiles = [measure.measure_profile(n, b, 2 if args.quick else 5) for n, b in pairs]
        sections.append(report.profile_section(profiles, measure.LAYER_KINDS))
    return sections


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    args = ap.parse_args(argv)
    try:  # before any timing: a refused report should not cost minutes
        provenance.check_results_dir(args.out, args.allow_dirty)
    except provenance.DirtyTreeError as e:
        ap.error(str(e))
    sha = provenance.git_sha()
    if args.quick:
        args.models = args.models or ["resnet20"]
        args.variants = args.variants or ["a"]
        args.batches = args.batches or [2]
        args.backends = args.backends or ["eager_cl"]
        args.reps, args.min_time = 2, 0.0
    allocator = f"{configure_allocator(args.malloc)}; {huge_pages_label()}"  # process-wide (timing.py)
    with torch_threads(args.threads):
        load_before = os.getloadavg()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sections = _sections(args)
        info = report.RunInfo(command=" ".join(["python -m src.bench", *argv]), when=now, sha=sha,
                              machine=machine_label(), allocator=allocator, load_before=load_before,
                              load_after=os.getloadavg())
    text = report.speed_report(info, ROUNDS, sections)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()
