"""Model-level speed benchmark: dense baselines against their decomposed structured variants.

    python -m src.bench [--models resnet56 resnet50] [--variants a b] [--batches 1 128]
                        [--backends eager eager_cl compile onnxruntime] [--no-plan] [--plan-forms F ...]
                        [--sections models layers training profile] [--threads N] [--reps 10]
                        [--min-time 0.5] [--malloc default] [--extra-allocators tuned jemalloc tcmalloc]
                        [--extra-backends eager_cl compile] [--quick] [--out results/speed.md] [--allow-dirty]

Models are built as the registry builds them, with random weights: the dense baseline by
``create_model(name)``, the structured one by ``create_model(f"struct_{name}_{v}")``, then
``project`` and ``decompose``; nothing is copied between them. For each (model, batch, backend)
the dense model and every decomposed variant are timed interleaved in this process, after
warm-up (src/bench/timing.py), in three rounds; a row gives each candidate's median latency in
its fastest round (a burst of other processes on a shared CPU then spoils one round, not the
row), the throughput, the measured time ratio (decomposed / dense) and, beside it, the MAC
ratio (the ideal).

The headline rows run in the process as a user has it: glibc's default allocator (``--malloc
default``), torch's default thread count unless ``--threads``. Each setup of
``--extra-allocators`` (src/bench/timing.py: ALLOCATORS; default ``tuned``, the in-process
mallopt tuning, and ``jemalloc`` / ``tcmalloc`` preloaded where installed; ``glibc_tunables``,
the mallopt thresholds set by environment, on request) adds a labelled row set, measured in a
child process (an allocator is process-wide) on ``--extra-backends`` (default eager_cl, where
every op allocates through malloc; add compile, or onnxruntime, which has its own arena), each
with how a user gets it. These row sets compare dense with decomposed without a deploy plan (the
plans are measured under the headline allocator).

Resumable (src/bench/cache.py): each unit (a model at one batch, an allocator row set, a section)
is stored in ``--cache-dir``/<commit>/ when measured (default runs/bench when the report goes
into results/), and a rerun of the same command at the same clean commit loads it, so a run cut
off by the end of a session continues where it stopped.

Backends (each with its own deploy plan, "+plan" rows: ``plan_recompose(..., backend=...)``
measures per layer the fastest exact form, src/deploy/forms.py, on the backend that will run it,
at this batch, then checked on the whole model for eager and ONNX Runtime, ``--plan-refine``;
``--plan-forms`` replaces the candidates, ``--no-plan`` skips the rows):

- ``eager`` (NCHW) and ``eager_cl`` (channels_last): plain PyTorch under ``torch.no_grad``; plan
  measured in eager PyTorch in the same memory format.
- ``compile``: ``torch.compile`` (inductor, freezing on: weights constant-folded, as for CPU
  inference), channels_last; plan measured on each layer's candidates compiled; skipped with the
  reason if compilation fails here.
- ``onnxruntime``: the model exported by :func:`src.deploy.export.export_onnx`, CPU provider, full
  graph optimisation, ``intra_op_num_threads`` = the thread count, no spin-waiting (sessions
  timed in turn would otherwise spin on each other's cores); plan measured on ONNX Runtime (the
  graph ``python -m src.export`` writes by default).
- ``cuda``, ``cuda_bf16`` (autocast), ``cuda_compile``: only when a GPU is present; no plan rows.

Further sections: the deploy plans (layers per form); the targets (batch 1: <= 1.00; from batch
16 on, ResNets <= 0.85, MobileNetV2 <= 0.95) with, per row, plain and planned ratios; the best
and worst row per backend; one 3x3 conv against its decomposition for C = 16..512
(:func:`src.bench.core.layer_table`); training steps (the structural loss's overhead, dense vs
structured images/s); and profiles of the hardest pairs: where eager PyTorch spends the time per
layer kind (torch.profiler), and where ONNX Runtime spends it per op type (its own profiler:
dense, decomposed variant b, and with its ONNX Runtime plan).
The report (markdown) is printed and written to --out, labelled with the machine, thread count,
torch version, allocator setting, the code's git commit and the load average (other processes
share this CPU; the interleaving keeps ratios comparable, absolute times are not). Into the
repository's results/ it writes only from committed code (src/provenance.py): with uncommitted
changes to tracked files it refuses before timing anything, unless --allow-dirty.

``--quick`` proves every path in seconds, not speed: a tiny model (two structured 3x3 convs of
one shape, src/bench/measure.py: TinyNet), variant a, batch 2, the backends eager_cl, compile and
onnxruntime each with its plan among three forms, few repetitions, one extra allocator row set
(tuned, eager_cl), and the quick versions of the other sections.

Layout: this module is the command line; src/bench/measure.py measures (returning the records
of src/bench/records.py: ``Row``, ``Skipped``, ``TrainingRow``, ``Profile``), src/bench/backends.py holds one unit per
backend (``session()`` + ``prepare(model, x)``), src/bench/report.py renders markdown, and
src/bench/timing.py the settings: the thread count, inductor freezing and the RNG are set in
``with`` blocks and restored after them; the allocator setting (mallopt) is process-wide.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from src import provenance

from . import core, measure, report
from .cache import DEFAULT_DIR, ReuseError, UnitCache, environment_key
from .backends import CPU_BACKENDS, CUDA_BACKENDS, default_backends, make_backend
from .measure import QUICK_MODEL, ROUNDS, Row, Skipped
from .timing import ALLOCATORS, configure_allocator, huge_pages_label, machine_label, torch_threads

# dense name -> batch sizes (CIFAR models at 32x32, ImageNet models at 224x224)
SUITE = {
    "resnet20": (1, 128), "resnet56": (1, 128), "cifar_mobilenet_v2": (1, 128),
    "resnet18": (1, 16), "resnet50": (1, 16), "mobilenet_v2": (1, 16),
}
SECTIONS = ("models", "layers", "training", "profile")
# (name, batch) profiled by default: where the targets are hardest
PROFILE = [("resnet56", 128), ("resnet50", 16), ("mobilenet_v2", 16)]
# (name, batch) of the training-speed section, and its structural-loss weight
TRAINING = [("resnet56", 128), ("resnet50", 16)]
TRAINING_LAMBDA = 1e-2
EXTRA_ALLOCATORS = ("tuned", "jemalloc", "tcmalloc")
EXTRA_BACKENDS = ("eager_cl",)
# --quick: the candidate forms of every backend's plan (the plain kinds and one fixed-pool form)
QUICK_PLAN_FORMS = ("decomposed", "dense", "decomposed[sp=mean]")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(item: Row | Skipped) -> None:
    if isinstance(item, Skipped):
        _log(f"  skipped: {report.skipped_line(item)}")
    else:
        _log("  " + report.row_line(item))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=[*SUITE, QUICK_MODEL], help="dense names (default: all six)")
    ap.add_argument("--variants", nargs="+", choices=("a", "b"), help="default: a b")
    ap.add_argument("--batches", nargs="+", type=int, help="override each model's batch sizes")
    ap.add_argument("--backends", nargs="+", choices=CPU_BACKENDS + CUDA_BACKENDS,
                    help="default: all CPU backends, plus the CUDA ones when a GPU is present")
    ap.add_argument("--no-plan", dest="plan", action="store_false", help="skip the per-backend deploy plan rows")
    ap.add_argument("--plan-forms", nargs="+", metavar="FORM",
                    help="candidate forms of every backend's plan (default: src.deploy.PLAN_FORMS[runtime])")
    ap.add_argument("--plan-refine", nargs="+", choices=("eager", "compile", "onnxruntime", "none"),
                    help="runtimes whose plan is also checked on the whole model (plan_recompose's refine; default: "
                         "eager onnxruntime, --quick: eager; compile's whole-model compiles cost minutes)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int,
                    help="intra-op threads (default: the process's default, torch.get_num_threads())")
    ap.add_argument("--reps", type=int, default=10, help="minimum interleaved repetitions per row")
    ap.add_argument("--min-time", type=float, default=0.5,
                    help="minimum seconds timed per candidate in each of the row's rounds")
    ap.add_argument("--malloc", choices=("default", "tuned"), default="default",
                    help="allocator setting of this process, the headline rows (default: glibc as a user has it; "
                         "see src/bench/timing.py:configure_allocator)")
    ap.add_argument("--extra-allocators", nargs="+", choices=(*EXTRA_ALLOCATORS, "glibc_tunables", "none"),
                    help="extra labelled row sets, each in a child process with that allocator setup (default: "
                         f"{' '.join(EXTRA_ALLOCATORS)}; those not installed are listed as not measured; "
                         "none: no extra rows)")
    ap.add_argument("--extra-backends", nargs="+", choices=CPU_BACKENDS,
                    help=f"backends of the extra allocator row sets (default: {' '.join(EXTRA_BACKENDS)})")
    ap.add_argument("--quick", action="store_true",
                    help=f"every path in seconds: {QUICK_MODEL}, variant a, batch 2, eager_cl + compile + onnxruntime "
                         "each with its plan, few repetitions, one extra allocator row set")
    ap.add_argument("--out", default="results/speed.md", help="report file (default: results/speed.md)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="write into results/ even with uncommitted changes (the header then names a -dirty sha)")
    ap.add_argument("--cache-dir", metavar="DIR",
                    help="resumable runs: each measured unit (a model at one batch, an allocator row set, a section) is "
                         "stored in DIR/<commit>/ at once and loaded by a rerun of the same clean commit and settings "
                         f"(default: {DEFAULT_DIR} when --out is in the repository's results/, else none; "
                         "see src/bench/cache.py)")
    ap.add_argument("--no-cache", action="store_true", help="measure everything afresh and store nothing")
    ap.add_argument("--reuse-commit", metavar="SHA",
                    help="also load the model units that a run at this earlier commit (an ancestor of HEAD) stored "
                         "without a failure, same settings and machine; failed ones are measured at HEAD. For a fix "
                         "that touches only what failed: the report names the commit, the units and the files changed")
    ap.add_argument("--rows-json", help=argparse.SUPPRESS)  # (a child process: write the model rows here)
    return ap


def _measure_models(args: argparse.Namespace, backend_names: Sequence[str]) -> tuple[list[Row], list[Skipped]]:
    backends = [make_backend(n, threads=args.threads or _threads()) for n in backend_names]
    rows: list[Row] = []
    skipped: list[Skipped] = []
    for name in args.models or list(SUITE):
        for batch in args.batches or SUITE.get(name, (2,)):
            _log(f"{name}, batch {batch}")
            key = {**args.unit_key, "name": name, "batch": batch, "backends": list(backend_names)}

            def measure_unit(name=name, batch=batch) -> str:
                return measure.rows_to_json(*measure.measure_model(
                    name, batch, args.variants or ["a", "b"], backends, reps=args.reps, min_time=args.min_time,
                    plan=args.plan, plan_forms=args.plan_forms, plan_reps=args.plan_reps,
                    plan_refine=args.plan_refine, progress=_progress))

            loaded = args.cache.loaded
            r, s = measure.rows_from_json(args.cache.get("models", key, measure_unit, reusable=_without_failure,
                                                         label=f"{name} at batch {batch}"))
            if args.cache.loaded > loaded:
                _log("  (stored by an earlier run of this commit: loaded)")
                for item in [*r, *s]:
                    _progress(item)
            rows += r
            skipped += s
    return rows, skipped


def _without_failure(value: str) -> bool:
    """A stored model unit in which every row was measured (nothing skipped)."""
    return not measure.rows_from_json(value)[1]


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _child_args(args: argparse.Namespace, setup_name: str, backends: Sequence[str], json_path: str,
                out: str) -> list[str]:
    """The command line of a child process measuring the extra row set of `setup_name`."""
    setup = ALLOCATORS[setup_name]
    argv = ["--sections", "models", "--malloc", setup.malloc, "--extra-allocators", "none", "--backends", *backends,
            "--reps", str(args.reps), "--min-time", str(args.min_time), "--out", out, "--allow-dirty",
            "--rows-json", json_path]
    argv += ["--cache-dir", str(args.cache_dir)] if args.cache_dir else ["--no-cache"]
    if args.models:
        argv += ["--models", *args.models]
    if args.variants:
        argv += ["--variants", *args.variants]
    if args.batches:
        argv += ["--batches", *map(str, args.batches)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv.append("--no-plan")  # dense vs decomposed: the plans are measured under the headline allocator
    if args.quick:
        argv.append("--quick")
    return [sys.executable, "-m", "src.bench", *argv]


def _extra_allocator_sections(args: argparse.Namespace) -> list[str]:
    """One section per extra allocator setup, each measured in a child process."""
    names = [n for n in (args.extra_allocators or EXTRA_ALLOCATORS) if n != "none"]
    backends = args.extra_backends or (["eager_cl"] if args.quick else [b for b in EXTRA_BACKENDS
                                                                        if b in default_backends(args.backends)])
    sections = []
    for name in names:
        setup = ALLOCATORS[name]
        env = setup.environment()
        if env is None:
            sections.append(report.allocator_section(setup.label, setup.how, [], [],
                                                     missing=f"none of {', '.join(setup.preload)} found on this machine"))
            continue
        _log(f"extra row set: {setup.label} ({' '.join(backends)}), in a child process")
        failed = []

        def measure_set(name=name, env=env) -> str | None:
            with tempfile.TemporaryDirectory(prefix="bench_alloc_") as tmp:
                json_path, out = os.path.join(tmp, "rows.json"), os.path.join(tmp, "speed.md")
                proc = subprocess.run(_child_args(args, name, backends, json_path, out), env={**os.environ, **env},
                                      cwd=provenance.REPO_ROOT, stdout=subprocess.DEVNULL)
                if proc.returncode != 0 or not os.path.exists(json_path):
                    failed.append(proc.returncode)
                    return None
                return Path(json_path).read_text()

        text = args.cache.get("allocator", {**args.unit_key, "setup": name, "environment": env, "backends": backends,
                                            "models": args.models, "batches": args.batches}, measure_set)
        if text is None:
            sections.append(report.allocator_section(setup.label, setup.how, [], [],
                                                     missing=f"the child process failed (exit {failed[0]})"))
            continue
        rows, skipped = measure.rows_from_json(text)
        allocator = json.loads(text).get("allocator", "")
        sections.append(report.allocator_section(f"{setup.label} ({allocator})" if allocator else setup.label,
                                                 setup.how, rows, skipped))
    return sections


def _sections(args: argparse.Namespace) -> list[str]:
    """Measure the requested sections and render each (under the caller's settings)."""
    sections = []
    if "models" in args.sections:
        rows, skipped = _measure_models(args, default_backends(args.backends))
        if args.rows_json:  # a child process of an extra allocator row set
            return [report.models_section(rows, skipped)], (rows, skipped)
        sections += [report.models_section(rows, skipped), report.plans_section(rows), report.targets_section(rows),
                     report.extremes_section(rows), *_extra_allocator_sections(args)]
    if "layers" in args.sections:
        _log("layers")
        sections.append(args.cache.get("layers", args.unit_key, lambda: report.layers_section(
            core.measure_layers(args.reps, core.LAYERS[:1] if args.quick else core.LAYERS))))
    if "training" in args.sections:
        _log("training")

        def training_section() -> str:
            training = []
            for name, batch in [(QUICK_MODEL, 8)] if args.quick else TRAINING:
                training.append(measure.measure_training(name, batch, max(2, args.reps // 2), TRAINING_LAMBDA))
                _log("  " + report.training_line(training[-1]))
            return report.training_section(training, TRAINING_LAMBDA)

        sections.append(args.cache.get("training", args.unit_key, training_section))
    if "profile" in args.sections:
        _log("profile")
        if args.quick:
            pairs = [(QUICK_MODEL, 2)]
        elif args.models or args.batches:  # what was asked for, e.g. --models resnet56 --batches 1
            pairs = [(n, b) for n in (args.models or list(SUITE)) for b in (args.batches or SUITE[n])]
        else:
            pairs = PROFILE
        key = {**args.unit_key, "pairs": pairs}
        sections.append(args.cache.get("profile", key, lambda: report.profile_section(
            [measure.measure_profile(n, b, 2 if args.quick else 5, forms=args.plan_forms) for n, b in pairs],
            measure.LAYER_KINDS)))
        if "onnxruntime" in default_backends(args.backends):
            _log("profile (ONNX Runtime)")
            variant = "a" if args.quick else "b"  # (b: the variants ONNX Runtime ran slowest decomposed)
            sections.append(args.cache.get("ort_profile", key, lambda: report.ort_profile_section(
                [measure.measure_ort_profile(n, b, 2 if args.quick else 10, variant=variant, threads=args.threads,
                                             forms=args.plan_forms, reps=2 if args.quick else 5) for n, b in pairs])))
    return sections, None


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = _parser()
    args = ap.parse_args(argv)
    try:  # before any timing: a refused report should not cost minutes
        provenance.check_results_dir(args.out, args.allow_dirty)
    except provenance.DirtyTreeError as e:
        ap.error(str(e))
    sha = provenance.git_sha()
    args.plan_reps = None
    if args.quick:
        args.models = args.models or [QUICK_MODEL]
        args.variants = args.variants or ["a"]
        args.batches = args.batches or [2]
        args.backends = args.backends or ["eager_cl", "compile", "onnxruntime"]
        args.plan_forms = args.plan_forms or list(QUICK_PLAN_FORMS)
        args.extra_allocators = args.extra_allocators or ["tuned"]
        args.reps, args.min_time, args.plan_reps = 2, 0.0, 2
        args.plan_refine = args.plan_refine or ["eager"]
    args.plan_refine = [r for r in (args.plan_refine or ["eager", "onnxruntime"]) if r != "none"]
    allocator = f"{configure_allocator(args.malloc)}; {huge_pages_label()}"  # process-wide (timing.py)
    threads = torch_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        # every setting that changes a unit's figures (src/bench/cache.py); units add their own
        args.unit_key = {"threads": _threads(), "malloc": args.malloc, "allocator": allocator, "reps": args.reps,
                         "min_time": args.min_time, "plan": args.plan, "plan_forms": args.plan_forms,
                         "plan_reps": args.plan_reps, "plan_refine": args.plan_refine, "variants": args.variants,
                         "quick": args.quick, "backends_asked": args.backends, "machine": machine_label(),
                         **environment_key()}
        if args.no_cache:
            args.cache_dir = None
        elif args.cache_dir is None and provenance.in_results_dir(args.out):
            args.cache_dir = DEFAULT_DIR
        try:
            args.cache = UnitCache.for_commit(args.cache_dir, args.reuse_commit)
        except ReuseError as e:
            ap.error(str(e))
        load_before = os.getloadavg()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        sections, child_rows = _sections(args)
        info = report.RunInfo(command=" ".join(["python -m src.bench", *argv]), when=now, sha=sha,
                              machine=machine_label(), allocator=allocator, load_before=load_before,
                              load_after=os.getloadavg(), resumed=args.cache.summary())
    if child_rows is not None:
        Path(args.rows_json).write_text(measure.rows_to_json(*child_rows, allocator=allocator))
    text = report.speed_report(info, ROUNDS, sections)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()
