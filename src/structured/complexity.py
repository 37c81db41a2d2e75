"""Analytic per-image complexity (docs/method.md section 5): params, mults (MACs) and adds.

Every Conv2d / Linear / sum-pool call is recorded by a forward hook on a meta-device copy of the
model (no memory, no compute), then counted with closed-form formulas:

- conv / linear: mults = outputs x K (K = C/g * kh * kw, or in_features); adds = outputs x (K - 1)
  accumulations, plus one per output for the bias. Other ops (BN, activations, pooling, residual
  adds) are not counted, as in the paper's tables and torch.utils.flop_counter.
- sum-pool, naive convention: (window volume - 1) additions per pooled output.
- sum-pool, running-sum convention (reported beside it): the separable implementation, each axis
  summed with running sums ((w - 1) adds for the first output of a line, then one add and one
  subtract per further output, never more than the naive count), channel axis first.

A structured (train-form) layer is counted twice: as it runs (the dense conv with the full
kernel) and as it will run after `decompose` (sum-pool + small conv), so one call reports the
dense, structured and decomposed figures. Params count every parameter of the model (so the
torchvision anchors, which include BatchNorm, are reproduced).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch
from torch import nn

from .layers import StructuredConv2d, StructuredLayer, StructuredLinear, conv_padding4
from .sumpool import FeatureSumPool, SumPool

__all__ = ["LayerCost", "Complexity", "complexity", "window_sum_adds"]


def window_sum_adds(length: int, window: int, dilation: int = 1, running: bool = False) -> int:
    """Additions to sum windows of `window` taps (spaced `dilation`) along a line of `length`."""
    if window <= 1:
        return 0
    outputs = length - dilation * (window - 1)
    if outputs <= 0:
        return 0
    naive = (window - 1) * outputs
    if not running:
        return naive
    total = 0
    for r in range(min(dilation, outputs)):  # independent subsequences of the dilated line
        out_r = len(range(r, outputs, dilation))
        total += min((window - 1) * out_r, (window - 1) + 2 * (out_r - 1))
    return total


@dataclass
class LayerCost:
    """One counted call. `*_dec` fields: the cost after `decompose` (equal for plain layers)."""

    name: str
    kind: str
    params: int
    mults: int
    adds: int
    adds_running: int
    params_dec: int
    mults_dec: int
    adds_dec: int
    adds_dec_running: int


@dataclass
class Complexity:
    input_size: tuple[int, ...]
    layers: list[LayerCost] = field(default_factory=list)
    params: int = 0  # all parameters of the model, as it is
    params_decomposed: int = 0  # after decompose

    def _sum(self, attr: str) -> int:
        return sum(getattr(layer, attr) for layer in self.layers)

    @property
    def mults(self) -> int:
        return self._sum("mults")

    @property
    def adds(self) -> int:
        return self._sum("adds")

    @property
    def adds_running(self) -> int:
        return self._sum("adds_running")

    @property
    def mults_decomposed(self) -> int:
        return self._sum("mults_dec")

    @property
    def adds_decomposed(self) -> int:
        return self._sum("adds_dec")

    @property
    def adds_decomposed_running(self) -> int:
        return self._sum("adds_dec_running")

    def totals(self) -> dict[str, int]:
        return {
            "params": self.params, "mults": self.mults, "adds": self.adds, "adds_running": self.adds_running,
            "params_decomposed": self.params_decomposed, "mults_decomposed": self.mults_decomposed,
            "adds_decomposed": self.adds_decomposed, "adds_decomposed_running": self.adds_decomposed_running,
        }

    def table(self) -> str:
        """Per-layer markdown table (adds: naive sum-pool convention / running sums)."""
        head = [f.name for f in fields(LayerCost)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for layer in self.layers:
            lines.append("| " + " | ".join(
                f"{getattr(layer, h):,}" if isinstance(getattr(layer, h), int) else getattr(layer, h) for h in head
            ) + " |")
        t = self.totals()
        lines.append(
            f"| **total** | | {t['params']:,} (all params) | {t['mults']:,} | {t['adds']:,} | {t['adds_running']:,} | "
            f"{t['params_decomposed']:,} | {t['mults_decomposed']:,} | {t['adds_decomposed']:,} | "
            f"{t['adds_decomposed_running']:,} |"
        )
        return "\n".join(lines)


def _conv_cost(out_per_image: int, k: int, bias: bool) -> tuple[int, int]:
    return out_per_image * k, out_per_image * (k - 1 + int(bias))


def _pool2d_adds(in_shape: Sequence[int], channel_window: int, kernel_size, padding4, dilation, groups,
                 running: bool) -> int:
    """Adds of sum_pool2d on one (C, H, W) input (the implementation's order: channels, pad, H, W)."""
    cin, h, w = in_shape
    c_out = cin - groups * (channel_window - 1)
    (kh, kw), (dh, dw) = kernel_size, dilation
    hp, wp = h + padding4[2] + padding4[3], w + padding4[0] + padding4[1]
    ho, wo = hp - dh * (kh - 1), wp - dw * (kw - 1)
    if not running:
        return c_out * ho * wo * (channel_window * kh * kw - 1)
    return (
        groups * h * w * window_sum_adds(cin // groups, channel_window, 1, True)
        + c_out * wp * window_sum_adds(hp, kh, dh, True)
        + c_out * ho * window_sum_adds(wp, kw, dw, True)
    )


def _count(name: str, m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerCost | None:
    batch = inp.shape[0]
    if isinstance(m, nn.Conv2d):
        outs = out.numel() // batch
        cin = m.in_channels // m.groups
        k = cin * m.kernel_size[0] * m.kernel_size[1]
        bias = m.bias is not None
        params = m.weight.numel() + (m.bias.numel() if bias else 0)
        mults, adds = _conv_cost(outs, k, bias)
        if not isinstance(m, StructuredConv2d):
            return LayerCost(name, "conv", params, mults, adds, adds, params, mults, adds, adds)
        c, n, _ = m.inner_shape
        kernel, pad4 = m.kernel_size, conv_padding4(m)
        cw, win = cin - c + 1, (kernel[0] - n + 1, kernel[1] - n + 1)
        in_shape = tuple(inp.shape[1:])
        pool = [_pool2d_adds(in_shape, cw, win, pad4, m.dilation, m.groups, r) for r in (False, True)]
        mults_d, adds_d = _conv_cost(outs, c * n * n, bias)
        params_d = m.out_channels * c * n * n + (m.bias.numel() if bias else 0)
        return LayerCost(name, "structured_conv", params, mults, adds, adds, params_d, mults_d,
                         adds_d + pool[0], adds_d + pool[1])
    if isinstance(m, nn.Linear):
        outs = out.numel() // batch
        bias = m.bias is not None
        params = m.weight.numel() + (m.bias.numel() if bias else 0)
        mults, adds = _conv_cost(outs, m.in_features, bias)
        if not isinstance(m, StructuredLinear):
            return LayerCost(name, "linear", params, mults, adds, adds, params, mults, adds, adds)
        c = m.inner_features
        rows = inp.numel() // batch // m.in_features
        w = m.in_features - c + 1
        pool = [rows * window_sum_adds(m.in_features, w, 1, r) for r in (False, True)]
        mults_d, adds_d = _conv_cost(outs, c, bias)
        params_d = m.out_features * c + (m.bias.numel() if bias else 0)
        return LayerCost(name, "structured_linear", params, mults, adds, adds, params_d, mults_d,
                         adds_d + pool[0], adds_d + pool[1])
    if isinstance(m, SumPool):
        args = (tuple(inp.shape[1:]), m.channel_window, m.kernel_size, m.padding, m.dilation, m.groups)
        naive, run = _pool2d_adds(*args, False), _pool2d_adds(*args, True)
        return LayerCost(name, "sumpool", 0, 0, naive, run, 0, 0, naive, run)
    if isinstance(m, FeatureSumPool):
        rows = inp.numel() // batch // inp.shape[-1]
        naive = rows * window_sum_adds(inp.shape[-1], m.window)
        run = rows * window_sum_adds(inp.shape[-1], m.window, 1, True)
        return LayerCost(name, "sumpool", 0, 0, naive, run, 0, 0, naive, run)
    return None


def _unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def complexity(model: nn.Module, input_size: Sequence[int], *, device: str = "meta") -> Complexity:
    """Per-image params, mults and adds of `model` for one input of `input_size` (C, H, W)
    (or (features,) for an MLP). Runs on a meta-device copy unless `device` says otherwise."""
    input_size = tuple(int(s) for s in input_size)
    work = copy.deepcopy(model).to(device).eval()
    records: list[tuple[str, nn.Module, torch.Size, torch.Size]] = []

    def hook(name):
        def fn(m, args, out):
            records.append((name, m, args[0].shape, out.shape))
        return fn

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in work.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, SumPool, FeatureSumPool))
    ]
    try:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        work(torch.zeros((1, *input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    result = Complexity(input_size)
    for name, m, in_shape, out_shape in records:
        cost = _count(name, m, torch.empty(in_shape, device="meta"), torch.empty(out_shape, device="meta"))
        if cost is not None:
            result.layers.append(cost)
    result.params = _unique_params(model)
    saved = sum(
        layer.weight.numel() - layer.weight.shape[0] * math.prod(layer.inner_shape)
        for _, layer in model.named_modules() if isinstance(layer, StructuredLayer)
    )
    result.params_decomposed = result.params - saved
    return result
