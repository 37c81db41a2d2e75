"""Measurements of the model benchmark (``python -m src.bench``): they return data, rendered by
src/bench/report.py.

- :func:`measure_model`: dense vs decomposed inference of one (model, batch) on each backend
  (src/bench/backends.py) -> :class:`Row` s and :class:`Skipped` backends;
- :func:`measure_training`: SGD steps, dense vs structured (+ structural loss) -> :class:`TrainingRow` s;
- :func:`measure_profile`: where the time goes per layer kind (torch.profiler) -> :class:`Profile`.

The records (:class:`Row`, ...) are defined in src/bench/records.py and re-exported here.
Models are built as the registry builds them, with random weights (``--quick``'s tiny model,
:data:`QUICK_MODEL`, is built here); each measurement runs in a :func:`~src.bench.timing.seeded`
block (seed 0, the caller's RNG state restored after it). Each backend's "+plan" rows run the
model in the deploy plan measured on that backend (``plan_recompose(..., backend=...)``,
src/deploy/tuning.py), applied with :func:`src.deploy.decompose_planned`.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src.deploy import PLAN_FORMS, LayerForm, decompose_planned, plan_recompose, plan_summary
from src.deploy.forms import PooledConv2d
from src.models import create_model, get_entry, load_structure
from src.structured import DecomposedConv2d, SumPool, complexity, decompose, project, structural_loss, structurize
from src.structured.ops import structured_layers

from .backends import CL, Backend, Skip
from .records import LAYER_KINDS, Breakdown, OrtProfile, PlanCounts, Profile, Row, Skipped, TrainingRow
from .timing import seeded, time_interleaved

__all__ = ["ROUNDS", "QUICK_MODEL", "PlanCounts", "Row", "Skipped", "TrainingRow", "Breakdown", "Profile",
           "OrtProfile", "measure_model", "measure_training", "measure_profile", "measure_ort_profile", "LAYER_KINDS",
           "model_info", "build", "plan_for", "rows_to_json", "rows_from_json", "ort_op_times"]

# interleaved timing rounds per row; each candidate's time is its best round's median
ROUNDS = 3
# --quick's model: small enough for torch.compile and ONNX export in seconds (see TinyNet)
QUICK_MODEL = "tiny_resnet"


class TinyNet(nn.Module):
    """The quick mode's model: a 3x3 stem, two residual-free 3x3 conv layers of one shape (one
    deploy-plan group), global pooling and a classifier; structured with the CIFAR ResNet rule
    sets (the stem and classifier excluded by name)."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.body = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.conv1(x)))


def model_info(name: str) -> tuple[tuple[int, int, int], int]:
    """(input size (C, H, W), number of classes) of a benchmark model."""
    if name == QUICK_MODEL:
        return (3, 32, 32), 10
    entry = get_entry(name)
    return entry.input_size, entry.num_classes


def build(name: str, variant: str | None = None) -> nn.Module:
    """The dense model `name` (variant None) or its structured variant, train form, random weights."""
    if name != QUICK_MODEL:
        return create_model(name if variant is None else f"struct_{name}_{variant}")
    model = TinyNet()
    if variant is not None:
        structurize(model, load_structure("cifar_resnet", variant))
    return model


def _input(name: str, batch: int) -> torch.Tensor:
    return torch.randn(batch, *model_info(name)[0])


def _structured(name: str, variant: str) -> nn.Module:
    return project(build(name, variant).eval())


def measure_model(name: str, batch: int, variants: Sequence[str], backends: Sequence[Backend], *, reps: int,
                  min_time: float, plan: bool, plan_forms: Sequence[str] | None = None, plan_reps: int | None = None,
                  plan_refine: Sequence[str] = ("eager", "onnxruntime"),
                  progress: Callable[[Row | Skipped], None] | None = None) -> tuple[list[Row], list[Skipped]]:
    """Per backend, the dense model and every decomposed variant of `name` (plus, where the
    backend has a plan runtime and `plan`, each variant with the deploy plan measured on that
    backend at this batch, among `plan_forms`, default PLAN_FORMS[runtime], `plan_reps`
    repetitions per candidate, default max(5, reps); checked on the whole model on the runtimes of
    `plan_refine`, see plan_recompose's refine) timed interleaved in ROUNDS rounds; each
    candidate's time is its fastest round's median. A plan that fails is a Skipped item."""
    with seeded(0):
        return _measure_model(name, batch, variants, backends, reps=reps, min_time=min_time, plan=plan,
                              plan_forms=plan_forms, plan_reps=plan_reps, plan_refine=plan_refine, progress=progress)


def plan_for(backend: Backend, structured: nn.Module, x: torch.Tensor, *, reps: int,
             forms: Sequence[str] | None = None, refine: bool = False) -> dict[str, str]:
    """The deploy plan of `structured` (train form) measured on `backend`'s runtime, in its
    memory format, with its thread count (ONNX Runtime)."""
    if backend.channels_last:
        structured, x = copy.deepcopy(structured).to(memory_format=CL), x.to(memory_format=CL)
    runtime = backend.plan_backend
    return plan_recompose(structured, x, backend=runtime, reps=reps, forms=forms or PLAN_FORMS[runtime],
                          threads=getattr(backend, "threads", None), refine=refine)


def _measure_model(name, batch, variants, backends, *, reps, min_time, plan, plan_forms, plan_reps, plan_refine,
                   progress):
    size = model_info(name)[0]
    dense = build(name).eval()
    dense_macs = complexity(dense, size).mults
    structured = {v: _structured(name, v) for v in variants}
    decomposed = {v: (decompose(s), complexity(s, size).mults_decomposed / dense_macs) for v, s in structured.items()}
    x = _input(name, batch)
    rows: list[Row] = []
    skipped: list[Skipped] = []
    for backend in backends:
        # (variant, plan counts or None) -> (deploy model, MAC ratio)
        candidates: dict[tuple[str, PlanCounts | None], tuple[nn.Module, float]] = {}
        for v, s in structured.items():
            candidates[(v, None)] = decomposed[v]
            if plan and backend.deploy_plan:
                try:
                    forms = plan_for(backend, s, x, reps=plan_reps or max(5, reps), forms=plan_forms,
                                     refine=backend.plan_backend in plan_refine)
                except Exception as e:  # noqa: BLE001 - a failed plan skips the plan row, with the reason
                    skipped.append(Skipped(name, batch, f"{backend.name} +plan ({v})",
                                           f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"))
                    if progress:
                        progress(skipped[-1])
                    continue
                planned = decompose_planned(s, forms)
                counts = PlanCounts.of(forms, sum(1 for _ in structured_layers(s)))
                candidates[(v, counts)] = (planned, complexity(planned, size).mults / dense_macs)
        with backend.session():
            try:
                runs = [backend.prepare(dense, x)] + [backend.prepare(m, x) for m, _ in candidates.values()]
            except Skip as e:
                skipped.append(Skipped(name, batch, backend.name, str(e)))
                if progress:
                    progress(skipped[-1])
                continue
            # per candidate, its fastest round: a burst of other processes on this shared CPU (which
            # hits the model with more, smaller ops harder) then spoils one round, not the row
            rounds = [time_interleaved(runs, reps=reps, min_time=min_time) for _ in range(ROUNDS)]
        times = [min(r[i] for r in rounds) for i in range(len(runs))]
        for i, ((v, counts), (_, mac_ratio)) in enumerate(candidates.items(), 1):
            row = Row(name, (size[1], size[2]), batch, backend.name, v, times[0], times[i], mac_ratio,
                      tuple(r[i] / r[0] for r in rounds), counts)
            rows.append(row)
            if progress:
                progress(row)
    return rows, skipped


def rows_to_json(rows: Sequence[Row], skipped: Sequence[Skipped], **extra) -> str:
    """Rows and skipped items as JSON (an extra allocator row set's child process hands them back)."""
    import dataclasses
    import json

    return json.dumps({"rows": [dataclasses.asdict(r) for r in rows],
                       "skipped": [dataclasses.asdict(s) for s in skipped], **extra})


def rows_from_json(text: str) -> tuple[list[Row], list[Skipped]]:
    import json

    data = json.loads(text)
    rows = []
    for r in data["rows"]:
        plan = r.pop("plan")
        if plan is not None:
            plan["forms"] = tuple(tuple(f) for f in plan["forms"])
            plan = PlanCounts(**plan)
        rows.append(Row(**{**r, "input_hw": tuple(r["input_hw"]), "round_ratios": tuple(r["round_ratios"])}, plan=plan))
    return rows, [Skipped(**s) for s in data["skipped"]]


# ---------------------------------------------------------------------------------- training
def measure_training(name: str, batch: int, reps: int, lam: float = 1e-2) -> TrainingRow:
    """Training steps: dense model, struct_<name>_a with the task loss only, and with
    + lam * structural_loss (the regularized route), timed interleaved with the structural loss's
    own forward + backward."""
    with seeded(0):
        return _measure_training(name, batch, reps, lam)


def _measure_training(name: str, batch: int, reps: int, lam: float) -> TrainingRow:
    x = _input(name, batch).to(memory_format=CL)
    y = torch.randint(0, model_info(name)[1], (batch,))
    dense = build(name).train().to(memory_format=CL)
    struct = build(name, "a").train().to(memory_format=CL)
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
    return TrainingRow(name, batch, t_dense, t_task, t_reg, t_alone)


# ---------------------------------------------------------------------------------- profile
def _kind(module: nn.Module, parent: nn.Module | None) -> str | None:
    if isinstance(module, SumPool):
        return "sum-pool"
    if isinstance(module, nn.Conv2d):
        if isinstance(parent, (DecomposedConv2d, PooledConv2d)):
            return "small conv (alpha)"
        return "conv (dense kernel)"
    return None


@torch.no_grad()
def profile_breakdown(model: nn.Module, x: torch.Tensor, iters: int) -> Breakdown:
    """ms per forward by layer kind (incl. 'total') and the top eight aten ops, from torch.profiler."""
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
    return Breakdown(ms, [(e.key[6:], e.self_cpu_time_total / 1e3 / iters) for e in ops])


def measure_profile(name: str, batch: int, iters: int, forms: Sequence[str] | None = None) -> Profile:
    """The dense model, struct_<name>_a decomposed, and with its eager deploy plan (among
    `forms`, default PLAN_FORMS["eager"]), profiled."""
    with seeded(0):
        x = _input(name, batch).to(memory_format=CL)
        s = _structured(name, "a").to(memory_format=CL)
        plan = plan_recompose(s, x, reps=5, forms=forms or PLAN_FORMS["eager"])
        counts = PlanCounts.of(plan, sum(1 for _ in structured_layers(s)))
        models = (build(name).eval(), decompose(s), decompose_planned(s, plan))
        dense_b, dec_b, planned_b = (profile_breakdown(m.to(memory_format=CL), x, iters) for m in models)
    return Profile(name, batch, counts, dense_b, dec_b, planned_b)


# ---------------------------------------------------------------------------------- ONNX Runtime profile
def ort_op_times(model: nn.Module, x: torch.Tensor, iters: int, threads: int | None = None) -> dict[str, float]:
    """ms per forward of each ONNX Runtime op type (e.g. Conv, ReorderInput, Slice, Add; fused
    nodes by their fused type) over `iters` runs after one warm-up, and their sum as "total"."""
    import json
    import tempfile
    from pathlib import Path

    from src.deploy.runtimes import ort_session
    from src.deploy.export import export_onnx

    with tempfile.TemporaryDirectory(prefix="bench_ort_profile_") as tmp:
        path = export_onnx(copy.deepcopy(model), Path(tmp) / "model.onnx", tuple(x.shape))
        session = ort_session(path, threads, profile=True)
        feed = {"input": x.numpy()}
        for _ in range(iters + 1):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        try:
            events = json.loads(trace.read_text())
        finally:
            trace.unlink(missing_ok=True)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = runs[1] if len(runs) > 1 else 0  # skip the warm-up run
    ms: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            ms[op] = ms.get(op, 0.0) + e["dur"] / 1e3 / iters
    ms = dict(sorted(ms.items(), key=lambda kv: -kv[1]))
    ms["total"] = sum(ms.values())
    return ms


def measure_ort_profile(name: str, batch: int, iters: int, *, variant: str = "b", threads: int | None = None,
                        forms: Sequence[str] | None = None, reps: int = 5) -> OrtProfile:
    """The ONNX Runtime op-type profile of the dense model, struct_<name>_<variant> decomposed,
    and with its ONNX Runtime plan (among `forms`, default PLAN_FORMS["onnxruntime"])."""
    with seeded(0):
        x = _input(name, batch)
        s = _structured(name, variant)
        plan = plan_recompose(s, x, backend="onnxruntime", threads=threads, reps=reps,
                              forms=forms or PLAN_FORMS["onnxruntime"])
        counts = PlanCounts.of(plan, sum(1 for _ in structured_layers(s)))
        models = {"dense": build(name).eval(), f"decomposed {variant}": decompose(s),
                  f"{variant}+plan ({_plan_text(counts)})": decompose_planned(s, plan)}
        columns = {label: ort_op_times(m, x, iters, threads) for label, m in models.items()}
    return OrtProfile(name, batch, variant, counts, columns)


def _plan_text(counts: PlanCounts) -> str:
    from .report import plan_label

    return plan_label(counts)
