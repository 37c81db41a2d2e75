"""Parameter-free sliding-window sums (the first stage of a decomposed structured layer).

The window sum over channels (within groups) and space is separable, so it is computed one axis
at a time, channels first (that shrinks the tensor). Each step is memory-bound, so each uses the
form with the fewest full-tensor passes (measured on CPU; ``python -m src.bench`` reports the
effect per layer and per model):

- space, window 2 x 2 with padding <= 1 (every 3x3 -> 2x2 structured conv), at inference:
  channels_last input: one ``avg_pool2d`` call with ``divisor_override=1`` for small inputs and
  from 64 channels on, else one depthwise conv with a ones kernel (oneDNN); NCHW input: one add
  pass per axis written straight into the output, edge rows copied (no padded copy of the
  input), or the general path below for small inputs (the NCHW ``avg_pool2d`` kernel is several
  times slower).
- space, otherwise (autograd, ``torch.compile``, other windows or dilations): explicit zero
  padding, then :func:`window_sum` per axis: plain pads, slices and adds, which inductor fuses.
- space, during ONNX export: AveragePool (padding counted) times the window size, the form ONNX
  Runtime runs fastest (measured 2x faster than pads and adds); exact for power-of-two windows
  such as 2 x 2, within one rounding otherwise. (Exporters silently drop ``avg_pool2d``'s
  ``divisor_override``, so the eager form cannot be exported as it is.)
- channels, window >= 32: differences of a cumulative sum, taken with the channel axis innermost
  for channels_last input (the CPU scan accumulates in float64, so the differences keep float32
  accuracy at the axis lengths of real networks); shorter windows: :func:`window_sum`.

:func:`window_sum` sums a window of w taps by binary doubling of shifted slices (widths 1, 2,
4, ... picked by the bits of w): about 2 log2(w) adds instead of w - 1. No pooling kernel is used
for channels: ``avg_pool3d`` on an unsqueezed tensor is several times slower than the conv it
replaces. Every path keeps the input's memory format.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .basis import _constant

__all__ = ["window_sum", "sum_pool2d", "SumPool", "FeatureSumPool"]


def window_sum(x: torch.Tensor, dim: int, window: int, dilation: int = 1) -> torch.Tensor:
    """out[i] = sum_{k < window} x[i + k * dilation] along `dim` (stride 1, no padding)."""
    if window < 1 or dilation < 1:
        raise ValueError(f"window_sum needs window >= 1 and dilation >= 1, got {window}, {dilation}")
    if window == 1:
        return x
    length = x.size(dim)
    out_len = length - dilation * (window - 1)
    if out_len < 1:
        raise ValueError(
            f"window_sum: window {window} (dilation {dilation}) is larger than the axis ({length})"
        )
    result = None
    offset = 0  # width already summed into `result`
    width, partial = 1, x  # partial[i] = sum of `width` taps starting at i
    remaining = window
    while True:
        if remaining & 1:
            piece = partial.narrow(dim, offset * dilation, out_len)
            result = piece if result is None else result + piece
            offset += width
        remaining >>= 1
        if not remaining:
            return result
        shift = width * dilation
        keep = partial.size(dim) - shift
        partial = partial.narrow(dim, 0, keep) + partial.narrow(dim, shift, keep)
        width *= 2


def _pad4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """Normalise padding to F.pad's (left, right, top, bottom)."""
    if isinstance(padding, int):
        return (padding,) * 4  # type: ignore[return-value]
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:  # (pad_h, pad_w) as in nn.Conv2d
        return (padding[1], padding[1], padding[0], padding[0])
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (pad_h, pad_w) or (left, right, top, bottom): {padding}")


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# From this channel window on, cumulative-sum differences beat binary doubling (measured on CPU).
CUMSUM_MIN_WINDOW = 32


def _channel_window_sum(x: torch.Tensor, window: int, groups: int) -> torch.Tensor:
    """Window sum over the channels of a (B, C, H, W) tensor within each group, keeping the
    memory format. A channels_last tensor is processed as its (B, H, W, G, C/G) view, so the
    channel axis is the contiguous one."""
    channels_last = _is_channels_last(x)
    t = x.permute(0, 2, 3, 1) if channels_last else x
    axis = 3 if channels_last else 1
    t = t.unflatten(axis, (groups, t.size(axis) // groups))
    axis += 1
    if window < CUMSUM_MIN_WINDOW or window > t.size(axis):  # (window_sum raises on the latter)
        out = window_sum(t, axis, window)
    else:
        prefix = torch.cumsum(t, axis)
        count = t.size(axis) - window + 1
        first, rest = prefix.narrow(axis, window - 1, 1), (prefix.narrow(axis, window, count - 1),
                                                           prefix.narrow(axis, 0, count - 1))
        if t.requires_grad and torch.is_grad_enabled():  # autograd: out= is not differentiable
            out = torch.cat([first, rest[0] - rest[1]], axis)
        else:  # inference: one output, no torch.cat pass (-17 ms of a 610 ms ResNet-50 forward, batch 16)
            out = torch.empty(prefix.narrow(axis, 0, count).shape, dtype=prefix.dtype, device=prefix.device)
            out.narrow(axis, 0, 1).copy_(first)
            torch.sub(*rest, out=out.narrow(axis, 1, count - 1))
    out = out.flatten(axis - 1, axis)
    return out.permute(0, 3, 1, 2) if channels_last else out


# Below this many elements (op overhead dominates) an inference input takes a one-op or
# fewer-op path; above it, one add pass per axis into a preallocated output is fastest.
SMALL_INPUT = 1 << 16


def _pair_sum(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Window-2 sum along `dim` of x zero-padded by (before, after) <= 1: one add pass written
    straight into the output, whose edge rows are copies of x's (no padded copy of x)."""
    length = x.size(dim)
    shape = list(x.shape)
    shape[dim] = length - 1 + before + after
    fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    torch.add(x.narrow(dim, 0, length - 1), x.narrow(dim, 1, length - 1),
              out=out.narrow(dim, before, length - 1))
    if before:
        out.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    if after:
        out.narrow(dim, -1, 1).copy_(x.narrow(dim, length - 1, 1))
    return out


# channels_last 2 x 2 inference pooling (measured on this project's CPU with
# `python -m src.bench`-style interleaved timing, transparent huge pages on): avg_pool2d with
# divisor_override=1 is fastest for small inputs and from 64 channels on (256 ch 14x14 x16:
# 0.20 ms vs 0.62 ms for two add passes); below 64 channels its kernel is slower than a depthwise
# conv with a ones kernel (16 ch 32x32 x128: avg_pool 1.29, add passes 1.00, depthwise 0.59 ms).
AVGPOOL_MIN_CHANNELS = 64
_ONES: dict[tuple, torch.Tensor] = {}


def _pool2x2_channels_last(x: torch.Tensor, pad_hw: tuple[int, int]) -> torch.Tensor:
    """Stride-1 2 x 2 window sum of a channels_last inference input, zero padding pad_hw (<= 1)."""
    channels = x.size(1)
    if channels >= AVGPOOL_MIN_CHANNELS or x.numel() < SMALL_INPUT or x.dtype != torch.float32:
        return F.avg_pool2d(x, 2, 1, pad_hw, divisor_override=1)
    key = (channels, x.dtype, x.device)
    ones = _ONES.get(key)
    if ones is None:  # an ordinary tensor even when first made inside inference_mode (basis._constant)
        ones = _ONES[key] = _constant(lambda: torch.ones(
            channels, 1, 2, 2, dtype=x.dtype, device=x.device).contiguous(memory_format=torch.channels_last))
    return F.conv2d(x, ones, None, 1, pad_hw, 1, channels)


def _spatial_sum(x: torch.Tensor, kernel: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int]) -> torch.Tensor:
    """Stride-1 window sum over H and W after zero padding (left, right, top, bottom). The
    checks are ordered cheapest first: at batch 1 they are a visible part of a layer's time."""
    (kh, kw), (left, right, top, bottom) = kernel, pads
    if kernel == (1, 1) and not any(pads):
        return x
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # torch.compile / export / ONNX export
        # ONNX has no sum-pool: AveragePool (padding counted) times the window size
        if dilation == (1, 1) and left == right <= kw // 2 and top == bottom <= kh // 2 \
                and torch.onnx.is_in_onnx_export():
            return F.avg_pool2d(x, kernel, 1, (top, left), count_include_pad=True) * (kh * kw)
    elif kernel == (2, 2) and dilation == (1, 1) and max(pads) <= 1 \
            and not (x.requires_grad and torch.is_grad_enabled()):
        if left == right and top == bottom and _is_channels_last(x):
            return _pool2x2_channels_last(x, (top, left))
        if x.numel() >= SMALL_INPUT and x.size(2) > 1 and x.size(3) > 1:
            return _pair_sum(_pair_sum(x, 2, top, bottom), 3, left, right)
    if any(pads):
        x = F.pad(x, pads)
    return window_sum(window_sum(x, 2, kh, dilation[0]), 3, kw, dilation[1])


def _sum_pool(x: torch.Tensor, channel_window: int, kernel: tuple[int, int],
              pads: tuple[int, int, int, int], dilation: tuple[int, int], groups: int) -> torch.Tensor:
    if channel_window > 1:
        x = _channel_window_sum(x, channel_window, groups)
    return _spatial_sum(x, kernel, pads, dilation)


def sum_pool2d(
    x: torch.Tensor,
    channel_window: int,
    kernel_size: int | Sequence[int],
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Stride-1 window sum of an (B, C, H, W) tensor over channels (within each of `groups`
    groups) and space, after zero padding. Output: (B, groups * (C/groups - channel_window + 1),
    H + pad_h - dil_h (k_h - 1), W + pad_w - dil_w (k_w - 1))."""
    kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
    if x.dim() != 4:
        raise ValueError(f"sum_pool2d expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}")
    channels = x.size(1)
    if channels % groups:
        raise ValueError(f"sum_pool2d: {channels} input channels are not divisible by groups={groups}")
    return _sum_pool(x, channel_window, kernel, _pad4(padding), dilation, groups)


class SumPool(nn.Module):
    """Sliding-window sum over channels (within groups) and space, stride 1, zero padded.

    The parameter-free first stage of a decomposed :class:`StructuredConv2d`: exact at the
    borders because the zero padding is applied explicitly before summing.
    """

    def __init__(
        self,
        channel_window: int,
        kernel_size: int | Sequence[int],
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ):
        super().__init__()
        self.channel_window = int(channel_window)
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.padding = _pad4(padding)
        self.dilation = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        self.groups = int(groups)
        left, right, top, bottom = self.padding
        # (pad_h, pad_w) when this pool is the common 2 x 2, symmetric-padding, channel-free one whose
        # channels_last inference inputs take _pool2x2_channels_last (see _spatial_sum), else None
        self._avg_pad = ((top, left) if self.channel_window == 1 and self.kernel_size == (2, 2)
                         and self.dilation == (1, 1) and left == right <= 1 and top == bottom <= 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fast path first, with the cheapest checks (at batch 1 a decomposed ResNet-56 layer's
        # Python overhead is a visible share of its time): the same call that _spatial_sum makes
        # for these inputs, without the generic dispatch.
        if self._avg_pad is not None and not x.requires_grad and x.dim() == 4 \
                and x.is_contiguous(memory_format=torch.channels_last) \
                and not torch.compiler.is_compiling() and not torch._C._get_tracing_state():
            return _pool2x2_channels_last(x, self._avg_pad)
        if x.dim() != 4:
            raise ValueError(f"SumPool expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}")
        # arguments normalised once in __init__ (sum_pool2d's per-call checks cost at batch 1)
        return _sum_pool(x, self.channel_window, self.kernel_size, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"channel_window={self.channel_window}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}"
        )


class FeatureSumPool(nn.Module):
    """Sliding-window sum over the last (feature) axis, stride 1: the first stage of a
    decomposed :class:`StructuredLinear`."""

    def __init__(self, window: int):
        super().__init__()
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_sum(x, -1 % x.dim(), self.window)

    def extra_repr(self) -> str:
        return f"window={self.window}"
