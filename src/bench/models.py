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
  that :func:`src.structured.ops.plan_recompose` measured faster in another exact form, at this
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
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src import provenance
from src.models import create_model, get_entry
from src.structured import (
    DecomposedConv2d,
    SumPool,
    complexity,
    decompose,
    project,
    structural_loss,
)
from src.structured.ops import plan_recompose, structured_layers

from .core import LAYERS, layer_table
from .timing import configure_allocator, huge_pages_label, machine_label, time_interleaved

CL = torch.channels_last
# dense name -> batch sizes (CIFAR models at 32x32, ImageNet models at 224x224)
SUITE = {
    "resnet20": (1, 128), "resnet56": (1, 128), "cifar_mobilenet_v2": (1, 128),
    "resnet18": (1, 16), "resnet50": (1, 16), "mobilenet_v2": (1, 16),
}
CPU_BACKENDS = ("eager", "eager_cl", "compile", "onnxruntime")
CUDA_BACKENDS = ("cuda", "cuda_bf16", "cuda_compile")
SECTIONS = ("models", "layers", "training", "profile")
# interleaved timing rounds per row; each candidate's time is its best round's median
ROUNDS = 3
# (name, batch, max time ratio): the targets, eager channels_last, variant a
TARGETS = [("resnet56", 128, 0.80), ("resnet56", 1, 1.00), ("resnet50", 16, 0.80)]
# (name, batch) of the training-speed section
TRAINING = [("resnet56", 128), ("resnet50", 16)]


class Skip(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass
class Row:
    model: str
    input: str
    batch: int
    backend: str
    variant: str
    dense_s: float
    dec_s: float
    mac_ratio: float
    round_ratios: tuple[float, ...] = ()  # decomposed / dense within each timing round

    @property
    def ratio(self) -> float:
        return self.dec_s / self.dense_s

    def markdown(self) -> str:
        return (f"| {self.model} | {self.input} | {self.batch} | {self.backend} | {self.variant} | "
                f"{_num(self.dense_s * 1e3)} | {_num(self.dec_s * 1e3)} | {_num(self.batch / self.dense_s)} | "
                f"{_num(self.batch / self.dec_s)} | **{self.ratio:.2f}** | {self.mac_ratio:.2f} |")


def _num(v: float) -> str:
    """Three significant digits, without exponents."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


ROW_HEADER = [
    "| model | input | batch | backend | variant | dense ms | decomposed ms | dense img/s | "
    "decomposed img/s | time ratio | MAC ratio |",
    "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _input(name: str, batch: int) -> torch.Tensor:
    return torch.randn(batch, *get_entry(name).input_size)


def _structured(name: str, variant: str) -> nn.Module:
    return project(create_model(f"struct_{name}_{variant}").eval())


def _runner(backend: str, model: nn.Module, x: torch.Tensor, threads: int, workdir: str) -> Callable[[], object]:
    """A zero-argument callable running `model` on `x` with `backend` (a private copy of the
    model is prepared); raises Skip when the backend is unavailable."""
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort

            from src.export import export_onnx

            path = export_onnx(copy.deepcopy(model), Path(workdir) / f"m{id(model)}_{x.shape[0]}.onnx", tuple(x.shape))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no spin-waiting after a run: idle sessions would steal the cores of the one being timed
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - any export/runtime failure skips the backend
            raise Skip(f"ONNX export / ONNX Runtime failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        feed = {"input": x.numpy()}
        return lambda: session.run(None, feed)
    model = copy.deepcopy(model).eval()
    cuda = backend in CUDA_BACKENDS
    if cuda:
        model, x = model.to("cuda", memory_format=CL), x.to("cuda", memory_format=CL)
    elif backend in ("eager_cl", "compile"):
        model, x = model.to(memory_format=CL), x.to(memory_format=CL)
    if backend in ("compile", "cuda_compile"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        model = torch.compile(model, dynamic=False)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if backend == "cuda_bf16" else nullcontext
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run():
        with torch.no_grad(), amp():
            out = model(x)
        sync()
        return out

    try:
        run()  # compiles where the backend compiles
    except Exception as e:  # noqa: BLE001
        raise Skip(f"{backend} failed here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return run


def model_rows(name: str, batch: int, variants: Sequence[str], backends: Sequence[str], *, threads: int,
               reps: int, min_time: float, plan: bool, workdir: str, skipped: list[str]) -> list[Row]:
    """Rows of one (model, batch): per backend, dense and all variants timed interleaved."""
    torch.manual_seed(0)
    size = get_entry(name).input_size
    dense = create_model(name).eval()
    dense_macs = complexity(dense, size).mults
    structured = {v: _structured(name, v) for v in variants}
    candidates: dict[str, tuple[nn.Module, float]] = {}  # label -> (deploy model, MAC ratio)
    for v, s in structured.items():
        candidates[v] = (decompose(s), complexity(s, size).mults_decomposed / dense_macs)
    x = _input(name, batch)
    rows = []
    for backend in backends:
        models: dict[str, tuple[nn.Module, float]] = {}
        for v, s in structured.items():
            models[v] = candidates[v]
            if plan and backend == "eager_cl":
                forms = plan_recompose(copy.deepcopy(s).to(memory_format=CL), x.to(memory_format=CL),
                                       reps=max(5, reps))
                total = sum(1 for _ in structured_layers(s))
                planned = decompose(s, recompose=forms)
                models[f"{v}+plan ({plan_label(forms, total)})"] = (
                    planned, complexity(planned, size).mults / dense_macs)
        if backend in ("compile", "cuda_compile"):
            torch._dynamo.reset()  # a fresh code cache per group: no recompile limits, no dynamic batch
        try:
            runs = [_runner(backend, dense, x, threads, workdir)]
            runs += [_runner(backend, m, x, threads, workdir) for m, _ in models.values()]
        except Skip as e:
            skipped.append(f"{name}, batch {batch}, {backend}: {e}")
            _log(f"  skipped: {skipped[-1]}")
            continue
        # per candidate, its fastest round: a burst of other processes on this shared CPU (which
        # hits the model with more, smaller ops harder) then spoils one round, not the row
        rounds = [time_interleaved(runs, reps=reps, min_time=min_time) for _ in range(ROUNDS)]
        times = [min(r[i] for r in rounds) for i in range(len(runs))]
        for i, (label, (_, mac_ratio)) in enumerate(models.items(), 1):
            row = Row(name, "x".join(map(str, size[1:])), batch, backend, label, times[0], times[i], mac_ratio,
                      tuple(r[i] / r[0] for r in rounds))
            rows.append(row)
            _log("  " + row.markdown())
    return rows


def plan_label(forms: dict[str, str], total: int) -> str:
    """'3 dense, 5 spatial of 54' (how many layers the deploy plan moved to each form)."""
    dense = sum(f == "dense" for f in forms.values())
    spatial = sum(f == "spatial" for f in forms.values())
    return f"{dense} dense, {spatial} spatial of {total}"


def targets_section(rows: Sequence[Row]) -> str:
    lines = ["## Targets (eager channels_last)", "",
             "Ratios from the table above; in parentheses, the ratio within each timing round.", "",
             "| pair | batch | target | decomposed (default) | met | with deploy plan | met |",
             "|---|---:|---:|---:|---|---:|---|"]
    found = False
    for name, batch, limit in TARGETS:
        sel = [r for r in rows if (r.model, r.batch, r.backend) == (name, batch, "eager_cl")]
        plain = next((r for r in sel if r.variant == "a"), None)
        planned = next((r for r in sel if r.variant.startswith("a+plan")), None)
        if plain is None:
            continue
        found = True
        cells = []
        for r in (plain, planned):
            if r is None:
                cells += ["", ""]
                continue
            spread = " / ".join(f"{v:.2f}" for v in r.round_ratios)
            cells += [f"{r.ratio:.2f} ({spread})", "yes" if r.ratio <= limit else "**no**"]
        lines.append(f"| struct_{name}_a / {name} | {batch} | <= {limit:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if found else ""


# ---------------------------------------------------------------------------------- profile
def _kind(module: nn.Module, parent: nn.Module | None) -> str | None:
    if isinstance(module, SumPool):
        return "sum-pool"
    if isinstance(module, nn.Conv2d):
        if isinstance(parent, DecomposedConv2d):
            return "small conv (alpha)"
        return "conv (dense kernel)"
    return None


@torch.no_grad()
def profile_breakdown(model: nn.Module, x: torch.Tensor, iters: int) -> tuple[dict[str, float], str]:
    """(ms per forward by layer kind incl. 'total', top-ops table) from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function

    handles, open_ranges = [], {}
    parents = {id(c): m for m in model.modules() for c in m.children()}
    for m in model.modules():
        kind = _kind(m, parents.get(id(m)))
        if kind is None:
            continue

        def pre(mod, args, kind=kind):
            open_ranges[id(mod)] = record_function(kind)
            open_ranges[id(mod)].__enter__()

        def post(mod, args, out):
            open_ranges.pop(id(mod)).__exit__(None, None, None)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                with record_function("forward"):
                    model(x)
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    ms = {e.key: e.cpu_time_total / 1e3 / iters for e in events
          if e.key in ("forward", "sum-pool", "small conv (alpha)", "conv (dense kernel)")}
    ms["total"] = ms.pop("forward", 0.0)
    ms["other (BN, ReLU, adds, pooling, fc)"] = ms["total"] - sum(v for k, v in ms.items() if k != "total")
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:8]
    table = ", ".join(f"{e.key[6:]} {e.self_cpu_time_total / 1e3 / iters:.1f}" for e in ops)
    return ms, table


def profile_section(pairs: Sequence[tuple[str, int]], iters: int) -> str:
    lines = ["## Profile: where the time goes (eager channels_last, torch.profiler, ms per forward)", "",
             "Layer kinds are timed as ranges around the modules; \"other\" is the rest of the forward. "
             "Below each table: the eight most expensive aten ops (self ms per forward)."]
    for name, batch in pairs:
        torch.manual_seed(0)
        x = _input(name, batch).to(memory_format=CL)
        s = _structured(name, "a").to(memory_format=CL)
        plan = plan_recompose(s, x, reps=5)
        total = sum(1 for _ in structured_layers(s))
        models = {"dense": create_model(name).eval(), "decomposed a": decompose(s),
                  f"a+plan ({plan_label(plan, total)})": decompose(s, recompose=plan)}
        results = {k: profile_breakdown(m.to(memory_format=CL), x, iters) for k, m in models.items()}
        kinds = ["conv (dense kernel)", "sum-pool", "small conv (alpha)", "other (BN, ReLU, adds, pooling, fc)", "total"]
        lines += ["", f"### {name} / struct_{name}_a, batch {batch}", "",
                  "| layer kind | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
        for k in kinds:
            lines.append(f"| {k} | " + " | ".join(f"{r[0].get(k, 0.0):.1f}" for r in results.values()) + " |")
        lines.append("")
        lines += [f"- {label}: {r[1]}" for label, r in results.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- training
def training_section(pairs: Sequence[tuple[str, int]], reps: int, lam: float = 1e-2) -> str:
    """Training steps (SGD, channels_last): dense model, structured model with the task loss only,
    and with + lam * structural_loss (the regularized route), timed interleaved with the
    structural loss's own forward + backward."""
    lines = ["## Training speed (SGD step: forward, backward, update; channels_last)", "",
             f"Structured = struct_<name>_a in train form (full kernels); lambda = {lam}. Loss overhead = "
             "(task + structural loss) / task loss only, same structured model. The structural loss costs "
             "the same per step at any batch size (it depends on the weights only), so its share shrinks as "
             "the batch grows: the last column is that fixed cost.", "",
             "| model | batch | dense ms | dense img/s | structured ms | structured img/s | "
             "+ structural loss ms | img/s | loss overhead | structured + loss / dense img/s | "
             "structural loss alone ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, batch in pairs:
        torch.manual_seed(0)
        x = _input(name, batch).to(memory_format=CL)
        y = torch.randint(0, get_entry(name).num_classes, (batch,))
        dense = create_model(name).train().to(memory_format=CL)
        struct = create_model(f"struct_{name}_a").train().to(memory_format=CL)
        opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (dense, struct)}

        def step(model, task=True, reg=False):
            opt = opts[id(model)]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) if task else 0.0
            if reg:
                loss = loss + lam * structural_loss(model)
            loss.backward()
            if task:
                opt.step()

        t_dense, t_task, t_reg, t_alone = time_interleaved(
            [lambda: step(dense), lambda: step(struct), lambda: step(struct, reg=True),
             lambda: step(struct, task=False, reg=True)], reps=reps, warmup=2)
        lines.append(
            f"| {name} | {batch} | {t_dense * 1e3:.0f} | {batch / t_dense:.1f} | {t_task * 1e3:.0f} | "
            f"{batch / t_task:.1f} | {t_reg * 1e3:.0f} | {batch / t_reg:.1f} | {100 * (t_reg / t_task - 1):+.1f} % | "
            f"{t_dense / t_reg:.3f} | {t_alone * 1e3:.0f} |")
        _log("  " + lines[-1])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main
def _backends(requested: Sequence[str] | None) -> list[str]:
    if requested:
        return list(requested)
    return list(CPU_BACKENDS) + (list(CUDA_BACKENDS) if torch.cuda.is_available() else [])


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    allocator = f"{configure_allocator(args.malloc)}; {huge_pages_label()}"
    torch.set_num_threads(args.threads)
    models = args.models or list(SUITE)
    backends = _backends(args.backends)
    load_before = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts, skipped, rows = [], [], []

    if "models" in args.sections:
        with tempfile.TemporaryDirectory() as workdir:
            for name in models:
                for batch in args.batches or SUITE[name]:
                    _log(f"{name}, batch {batch}")
                    rows += model_rows(name, batch, args.variants or ["a", "b"], backends, threads=args.threads,
                                       reps=args.reps, min_time=args.min_time, plan=args.plan,
                                       workdir=workdir, skipped=skipped)
        table = ["## Models: dense vs decomposed (inference)", "",
                 "Time ratio = decomposed / dense latency (median), MAC ratio = decomposed / dense "
                 "multiply-accumulates (the ideal). Variant \"a+plan\": the deploy plan measured at this "
                 "batch: per layer the fastest exact form, decomposed, \"spatial\" (sum-pool over space only, "
                 "then an n x n conv over all channels) or \"dense\" (one conv with the structured kernel); "
                 "its MAC ratio counts each layer in the form it runs.", "", *ROW_HEADER, *(r.markdown() for r in rows)]
        if skipped:
            table += ["", "Skipped:", *(f"- {s}" for s in skipped)]
        parts.append("\n".join(table))
        targets = targets_section(rows)
        if targets:
            parts.append(targets)
    if "layers" in args.sections:
        _log("layers")
        body = layer_table(args.reps, LAYERS[:1] if args.quick else LAYERS).split("\n", 1)[1]
        parts.append("## Layer level: one 3x3 conv (C -> C, stride 1, pad 1) vs SumPool + small conv (n = 2)\n"
                     + body)
    if "training" in args.sections:
        _log("training")
        pairs = [("resnet20", 8)] if args.quick else TRAINING
        parts.append(training_section(pairs, max(2, args.reps // 2)))
    if "profile" in args.sections:
        _log("profile")
        if args.quick:
            pairs = [("resnet20", 2)]
        elif args.models or args.batches:  # what was asked for, e.g. --models resnet56 --batches 1
            pairs = [(n, b) for n in (args.models or list(SUITE)) for b in (args.batches or SUITE[n])]
        else:
            pairs = [(n, b) for n, b, _ in TARGETS if b > 1]
        parts.append(profile_section(pairs, 2 if args.quick else 5))

    load_after = os.getloadavg()
    header = (
        "# Speed: dense baselines vs decomposed structured models\n\n"
        f"Generated by `{' '.join(['python -m src.bench', *argv])}` on {now}, code at git `{sha}`.\n\n"
        f"Machine: {machine_label()}; {allocator}. Load average (1/5/15 min) "
        f"{'/'.join(f'{v:.2f}' for v in load_before)} at start, {'/'.join(f'{v:.2f}' for v in load_after)} "
        "at the end (other processes share this CPU: absolute times vary, the interleaved ratios much less). "
        "Random weights, eval mode; medians of interleaved repetitions after warm-up (model rows: "
        f"each candidate's fastest of {ROUNDS} rounds)."
    )
    report = "\n\n".join([header, *parts]) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return report


if __name__ == "__main__":
    main()
