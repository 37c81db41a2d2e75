"""Deployment tuning: how fast the exact method runs on given hardware, never what it computes.

The core (src/structured) holds the method, every exact form of it and the default choice among
the sum-pool forms (the CPU-fast exact forms, ``src.structured.CPU_SUM_POOL_POLICY``); this
module holds the explicit, measured per-model choices:

- :func:`plan_recompose`: the per-layer deploy plan (layer name -> exact form,
  src/deploy/forms.py), measured on an example input on the backend that will run the model:
  eager PyTorch, ``torch.compile`` or ONNX Runtime (src/deploy/runtimes.py);
  :func:`plan_for_onnxruntime`: the ONNX Runtime one on a seeded random input (``python -m src.export``).
- :func:`time_interleaved` (src/timer.py): the wall-clock timer it, and the benchmarks
  (src/bench), use; re-exported here.

Importing it changes nothing in the core (no policy is installed as a side effect).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from src.structured._util import is_channels_last
from src.structured.layers import StructuredLayer
from src.structured.ops import decompose
from src.timer import time_interleaved

from .forms import DEPLOY_FORMS, LayerForm, decompose_planned, layer_forms, plannable_layers, rewrite_layer
from .runtimes import RUNTIMES as PLAN_BACKENDS

__all__ = ["time_interleaved", "plan_recompose", "plan_for_onnxruntime", "PLAN_FORMS", "PLAN_BACKENDS"]


# ------------------------------------------------------------------------------------------------
# The deploy plan
# ------------------------------------------------------------------------------------------------

PLAN_FORMS: dict[str, tuple[str, ...]] = {
    # eager: the core's default sum-pool policy already picks the fastest sum-pool form per
    # input, so the layer kinds matter most; the new fixed-kernel forms are candidates too
    "eager": ("decomposed", "spatial", "dense", "decomposed[ch=ones_conv]", "decomposed[sp=mean]",
              "spatial[sp=mean]"),
    # inductor fuses pads / slices / adds itself; a conv-only or pool + conv layer may still win
    "compile": ("decomposed", "spatial", "dense", "decomposed[ch=ones_conv]", "decomposed[ch=cumsum]",
                "decomposed[sp=mean]", "decomposed[ch=ones_conv,sp=mean]", "spatial[sp=mean]"),
    # ONNX Runtime: conv and pool nodes stay in its blocked (NCHWc) layout, slices and adds do
    # not; the multiply after AveragePool is folded into the conv by sp=mean
    "onnxruntime": ("decomposed", "spatial", "dense", "decomposed[ch=ones_conv]", "decomposed[sp=mean]",
                    "decomposed[ch=ones_conv,sp=mean]", "decomposed[sp=depthwise]",
                    "decomposed[ch=ones_conv,sp=depthwise]", "spatial[sp=mean]", "spatial[sp=depthwise]"),
}
"""The candidate forms each backend's plan times by default (src/deploy/forms.py); each layer is
timed in those that apply to it. ``plan_recompose(..., backend="eager")`` without `forms` times
only the three layer kinds (DEPLOY_FORMS)."""


def _signature(layer: nn.Module, x: torch.Tensor) -> tuple:
    """What a layer's speed depends on: its class, hyper-parameters and structure, and its input's
    shape, dtype, device and memory format (not its weights' values)."""
    keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
            "inner_channels", "inner_kernel_size", "in_features", "out_features", "inner_features")
    attrs = tuple(repr(getattr(layer, k, None)) for k in keys)
    pool = getattr(layer, "pool", None)
    pads = repr(getattr(pool, "padding", None))
    bias = getattr(layer, "bias", None) is not None or getattr(getattr(layer, "conv", None), "bias", None) is not None
    return (type(layer).__name__, attrs, pads, bias, tuple(x.shape), x.dtype, x.device.type, is_channels_last(x))


def _record_inputs(module: nn.Module, example_input: torch.Tensor) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    inputs: dict[str, torch.Tensor] = {}
    layers = dict(plannable_layers(module))
    handles = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0]))
               for name, layer in layers.items()]
    try:
        module(example_input)
    finally:
        for h in handles:
            h.remove()
    return layers, inputs


def _time_eager(groups, reps):
    times = []
    for mods, x in groups:
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        mods = [m.to(memory_format=fmt) for m in mods]
        times.append(time_interleaved([lambda m=m: m(x) for m in mods], reps=reps, warmup=2))
    return times


def _time_compiled(groups, reps):
    from .runtimes import compile_session, compiled_runner

    times = []
    for mods, x in groups:
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        with compile_session():
            runs = [compiled_runner(m.to(memory_format=fmt), x) for m in mods]
            times.append(time_interleaved(runs, reps=reps, warmup=2))
    return times


def _time_onnxruntime(groups, reps, threads):
    from .runtimes import export_many_onnx, ort_session

    modules, inputs, index = [], [], []
    for j, (mods, x) in enumerate(groups):
        inputs.append(x.contiguous())
        modules += mods
        index += [j] * len(mods)
    graphs = iter(export_many_onnx(modules, inputs, index))
    times = []
    for mods, x in groups:
        array = x.detach().cpu().contiguous().numpy()
        sessions = [ort_session(next(graphs), threads) for _ in mods]
        runs = [lambda s=s, feed={s.get_inputs()[0].name: array}: s.run(None, feed) for s in sessions]
        times.append(time_interleaved(runs, reps=reps, warmup=2))
    return times


def _uniform_plans(module: nn.Module, forms: Sequence[LayerForm], layers: dict[str, nn.Module]) -> list[dict[str, str]]:
    """Per non-default form, the plan putting every layer it applies to in it (distinct, non-empty)."""
    out: list[dict[str, str]] = []
    for f in forms:
        if f.is_default:
            continue
        plan = {name: str(f) for name, layer in layers.items() if layer_forms(layer, [f])}
        if plan and plan not in out:
            out.append(plan)
    return out


def _time_whole_models(module, x, plans, backend, reps, threads):
    """Seconds per forward of `module` deployed with each plan, on `backend`, interleaved."""
    from .runtimes import compile_session, compiled_runner, eager_runner, onnxruntime_runner

    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    models = [decompose_planned(module, p).eval().to(memory_format=fmt) for p in plans]
    if backend == "compile":
        with compile_session():
            runs = [compiled_runner(m, x) for m in models]
            return time_interleaved(runs, reps=reps, warmup=2)
    if backend == "onnxruntime":
        runs = [onnxruntime_runner(m, x, threads) for m in models]
    else:
        runs = [eager_runner(m, x) for m in models]
    return time_interleaved(runs, reps=reps, warmup=2)


@torch.no_grad()
def plan_recompose(module: nn.Module, example_input: torch.Tensor, *, reps: int = 15,
                   margin: float = 0.05, forms: Sequence[str] | None = None, backend: str = "eager",
                   threads: int | None = None, refine: bool = False) -> dict[str, str]:
    """The deploy plan for `backend` ("eager", "compile" or "onnxruntime"): layer name -> form
    for the layers of `module` that run faster in another exact form than decomposed, measured
    on this machine, on that backend. Apply it with :func:`src.deploy.forms.decompose_planned`.

    `module` is a train-form structured model or an already decomposed one. One forward pass of
    `example_input` records each layer's input. Layers are grouped by what their speed depends on
    (class, hyper-parameters, structure, input shape / dtype / memory format); for each group one
    layer is timed in each form of `forms` that applies to it (:func:`src.deploy.forms.layer_forms`;
    default ``PLAN_FORMS[backend]``, for eager the three layer kinds), interleaved, median of
    `reps` after warm-up, on the backend: eager in the input's memory format; ``torch.compile``
    (inductor, freezing) in it; ONNX Runtime (CPU provider, `threads` intra-op threads, default
    torch's count) on the graphs the dynamo exporter writes for the candidates (all exported at
    once). A group leaves the decomposed form only when another is faster by more than `margin`
    (a fraction), so measurement noise leaves layers decomposed. The plan is specific to the
    backend, input shape, thread count and hardware it was measured on.

    ``refine=True`` then checks the plan on the whole model, where layers meet their neighbours
    (fusions, layout changes between nodes): the model deployed with the per-layer plan, with no
    plan (all decomposed) and with every layer in each single candidate form (where it applies)
    is timed on the backend, and the fastest of these plans is returned; another replaces the
    per-layer plan only when faster by more than `margin`.
    """
    if backend not in PLAN_BACKENDS:
        raise ValueError(f"plan_recompose: unknown backend {backend!r}; choose from {PLAN_BACKENDS}")
    if forms is None:
        forms = DEPLOY_FORMS if backend == "eager" else PLAN_FORMS[backend]
    parsed = [LayerForm.parse(f) for f in forms]
    if not any(f.is_default for f in parsed):
        raise ValueError(f"plan_recompose: forms must include 'decomposed', got {tuple(forms)}")
    layers, inputs = _record_inputs(module, example_input)
    groups: dict[tuple, list[str]] = {}
    for name, x in inputs.items():
        groups.setdefault(_signature(layers[name], x), []).append(name)
    timed: list[tuple[list[str], list[LayerForm]]] = []
    work = []
    for names in groups.values():
        rep = layers[names[0]]
        if isinstance(rep, StructuredLayer):  # decomposed once, each form built from it
            rep = decompose(rep, tol=math.inf)
        candidates = layer_forms(rep, parsed)
        if len(candidates) < 2:
            continue
        candidates.sort(key=lambda f: not f.is_default)  # decomposed first
        work.append(([rewrite_layer(rep, f).eval() for f in candidates], inputs[names[0]]))
        timed.append((names, candidates))
    if not work:
        return {}
    if backend == "eager":
        times = _time_eager(work, reps)
    elif backend == "compile":
        times = _time_compiled(work, reps)
    else:
        times = _time_onnxruntime(work, reps, threads)
    plan: dict[str, str] = {}
    for (names, candidates), t in zip(timed, times):
        by_form = dict(zip(candidates, t))
        best = min(by_form, key=by_form.get)
        if not best.is_default and by_form[best] * (1 + margin) < t[0]:
            plan.update(dict.fromkeys(names, str(best)))
    order = {name: i for i, name in enumerate(layers)}
    plan = dict(sorted(plan.items(), key=lambda kv: order[kv[0]]))
    if refine:
        alternatives = [p for p in [{}, *_uniform_plans(module, parsed, layers)] if p != plan]
        t = _time_whole_models(module, example_input, [plan, *alternatives], backend, reps, threads)
        best = min(range(len(alternatives)), key=lambda i: t[i + 1], default=None)
        if best is not None and t[best + 1] * (1 + margin) < t[0]:
            plan = alternatives[best]
    return plan


def plan_for_onnxruntime(model: nn.Module, input_shape: tuple[int, ...], *, threads: int | None = None,
                         reps: int = 15, forms: Sequence[str] | None = None, refine: bool = True) -> dict[str, str]:
    """The ONNX Runtime deploy plan of a decomposed (or train-form) model, measured on a seeded
    random input of `input_shape` (B, C, H, W): :func:`plan_recompose` with backend
    "onnxruntime" (`refine`: checked on the whole model against no plan and each form
    everywhere). ``python -m src.export`` measures it before exporting."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(*input_shape)
    return plan_recompose(model, x, backend="onnxruntime", threads=threads, reps=reps, forms=forms, refine=refine)
