"""Deployment tuning: how fast the exact method runs on given hardware, never what it computes.

The core (src/structured) holds the method and every exact form of it; this module holds the
choices among those forms that were made by measuring, on this project's CPU:

- :class:`CpuSumPoolPolicy` / :data:`CPU_SUM_POOL_POLICY`: which exact sum-pool form runs where
  several apply (thresholds measured with interleaved timing, ``python -m src.bench``). It is
  installed into the core (``src.structured.sumpool.set_sum_pool_policy``) when this module is
  first imported, i.e. on any import of ``src.deploy``, unless another policy was installed
  first; without it the core runs its reference forms (same results up to rounding, slower).
  Override a threshold with ``set_sum_pool_policy(dataclasses.replace(CPU_SUM_POOL_POLICY, ...))``.
- :func:`plan_recompose`: the per-layer deploy plan for ``decompose(model, recompose=plan)``,
  measured on an example input.
- :func:`time_interleaved`: the wall-clock timer both of them, and the benchmarks (src/bench),
  use.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from src.structured._util import is_channels_last
from src.structured.layers import StructuredConv2d, StructuredLayer
from src.structured.ops import DEPLOY_FORMS, decompose, structured_layers
from src.structured.sumpool import SumPoolPolicy, get_sum_pool_policy, set_sum_pool_policy

__all__ = ["time_interleaved", "plan_recompose", "CpuSumPoolPolicy", "CPU_SUM_POOL_POLICY"]


# ------------------------------------------------------------------------------------------------
# The timer
# ------------------------------------------------------------------------------------------------


def time_interleaved(fns: Sequence[Callable[[], object]], reps: int = 20, warmup: int = 3,
                     min_time: float = 0.0) -> list[float]:
    """Median seconds per call of each fn, timed round-robin in one process, so machine noise hits
    them alike. Runs at least `reps` rounds and keeps going until `min_time` seconds have been
    spent per fn."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    while True:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - t0)
        if len(samples[0]) >= reps and sum(samples[0]) >= min_time:
            break
    return [statistics.median(s) for s in samples]


# ------------------------------------------------------------------------------------------------
# The sum-pool policy
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSumPoolPolicy(SumPoolPolicy):
    """The sum-pool forms measured fastest on this project's CPU (eager PyTorch with oneDNN,
    interleaved timing as in ``python -m src.bench``, transparent huge pages on). Each field is a
    measured crossover; see src/structured/sumpool.py for the forms themselves."""

    cumsum_min_window: int = 32
    """From this channel window on, cumulative-sum differences ("cumsum") beat binary doubling."""

    small_input: int = 1 << 16
    """Below this many elements op overhead dominates and a 2 x 2 inference input takes a one-op
    or fewer-op form; from it on, an NCHW input takes one add pass per axis into a preallocated
    output ("pair_adds"; the NCHW ``avg_pool2d`` kernel is several times slower)."""

    avgpool_min_channels: int = 64
    """channels_last 2 x 2 inference input: ``avg_pool2d`` with ``divisor_override=1`` is fastest
    for small inputs and from this many channels on (256 ch 14x14 x16: 0.20 ms vs 0.62 ms for two
    add passes); below it, a float32 input runs faster as a depthwise conv with a ones kernel
    (16 ch 32x32 x128: avg_pool 1.29, add passes 1.00, depthwise 0.59 ms)."""

    onnx_average_pool: bool = True
    """During ONNX export: AveragePool times the window size, the form ONNX Runtime runs fastest
    (measured 2x faster than pads and adds)."""

    def channel_form(self, x: torch.Tensor, window: int, groups: int) -> str:  # noqa: D102
        return "cumsum" if window >= self.cumsum_min_window else "doubling"

    def pool2x2_form(self, x: torch.Tensor, pads: tuple[int, int, int, int]) -> str:  # noqa: D102
        left, right, top, bottom = pads
        if left == right and top == bottom and is_channels_last(x):
            if x.size(1) >= self.avgpool_min_channels or x.numel() < self.small_input or x.dtype != torch.float32:
                return "avg_pool"
            return "ones_conv"
        if x.numel() >= self.small_input and x.size(2) > 1 and x.size(3) > 1:
            return "pair_adds"
        return "padded"

    def export_form(self, kernel: tuple[int, int], pads: tuple[int, int, int, int]) -> str:  # noqa: D102
        return "onnx_average_pool" if self.onnx_average_pool else "padded"


CPU_SUM_POOL_POLICY = CpuSumPoolPolicy()

if type(get_sum_pool_policy()) is SumPoolPolicy:  # the core's reference default, not a policy someone chose
    set_sum_pool_policy(CPU_SUM_POOL_POLICY)


# ------------------------------------------------------------------------------------------------
# The deploy plan
# ------------------------------------------------------------------------------------------------


def _forms_for(layer: StructuredLayer, forms: Sequence[str]) -> list[str]:
    """The distinct deploy forms worth timing for `layer` ("spatial" only when it differs from both
    others: a conv with channel and spatial structure)."""
    out = [f for f in forms if f != "spatial"]
    if "spatial" in forms and isinstance(layer, StructuredConv2d) \
            and layer.inner_channels < layer.in_channels // layer.groups \
            and layer.inner_kernel_size < layer.kernel_size[0]:
        out.append("spatial")
    return out


@torch.no_grad()
def plan_recompose(module: nn.Module, example_input: torch.Tensor, *, reps: int = 15,
                   margin: float = 0.05, forms: Sequence[str] = DEPLOY_FORMS) -> dict[str, str]:
    """The deploy plan for ``decompose(module, recompose=plan)``: name -> form ("dense" or
    "spatial") for the structured layers of `module` that run faster in that form than
    decomposed, measured on this machine.

    One forward pass of `example_input` records each structured layer's input; each layer is
    then timed in each of `forms` on that input (interleaved, median of `reps` after warm-up, in
    the input's memory format and the current thread setting). A layer leaves the decomposed
    form only when another is faster by more than `margin` (a fraction), so measurement noise
    leaves layers decomposed. The plan is specific to the input shape, hardware and backend it
    was measured on (this is eager PyTorch; a compiler or ONNX Runtime fuses differently).
    """
    unknown = set(forms) - set(DEPLOY_FORMS)
    if unknown or "decomposed" not in forms:
        raise ValueError(f"plan_recompose: forms must include 'decomposed' and be among {DEPLOY_FORMS}, "
                         f"got {tuple(forms)}")
    inputs: dict[str, torch.Tensor] = {}
    layers = dict(structured_layers(module))
    handles = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0]))
               for name, layer in layers.items()]
    try:
        module(example_input)
    finally:
        for h in handles:
            h.remove()
    plan: dict[str, str] = {}
    for name, x in inputs.items():
        layer = layers[name]
        fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        candidates = _forms_for(layer, forms)
        mods = [decompose(layer, tol=math.inf, recompose={"": f}).to(memory_format=fmt) for f in candidates]
        times = dict(zip(candidates, time_interleaved([lambda m=m: m(x) for m in mods], reps=reps, warmup=2)))
        best = min(times, key=times.get)
        if best != "decomposed" and times[best] * (1 + margin) < times["decomposed"]:
            plan[name] = best
    return plan
