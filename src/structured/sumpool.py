"""Parameter-free sliding-window sums (the first stage of a decomposed structured layer).

The window sum over channels (within groups) and space is separable, so it is computed one axis
at a time, channels first (it shrinks the tensor). Every path is a few full-tensor passes of
memory-bound work, so each axis uses the form with the fewest passes (measured on CPU, see
``python -m src.bench``):

- space, stride 1, padding at most half the window (the usual case): one ``avg_pool2d`` with
  ``divisor_override=1``, a single pass that also applies the zero padding and keeps
  channels_last. Other geometries (dilation, larger or asymmetric padding) pad explicitly and
  use shifted adds. ONNX exporters drop ``divisor_override``, so export takes the general path.
- channels, window >= 16: differences of a cumulative sum along the channel axis, taken
  channels-innermost (2-3 passes; the scan accumulates in float64 on CPU, so the differences
  keep float32 accuracy for the axis lengths of real networks).
- otherwise (:func:`window_sum`): binary doubling of shifted slices (sum of widths 1, 2, 4, ...
  picked by the bits of the window): about 2 log2(w) adds instead of w - 1.

No pooling kernel is used for channels: ``avg_pool3d`` on an unsqueezed tensor is several times
slower than the conv it replaces.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


# From this channel window on, cumulative-sum differences beat binary doubling (fewer passes).
CUMSUM_MIN_WINDOW = 16


def _channel_window_sum(x: torch.Tensor, window: int, groups: int) -> torch.Tensor:
    """Window sum over the channels of a (B, C, H, W) tensor within each group, keeping the
    memory format. A channels_last tensor is processed as its (B, H, W, G, C/G) view, so the
    channel axis is the contiguous one."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    t = x.permute(0, 2, 3, 1) if channels_last else x
    axis = 3 if channels_last else 1
    t = t.unflatten(axis, (groups, t.size(axis) // groups))
    axis += 1
    if window < CUMSUM_MIN_WINDOW or window > t.size(axis):  # (window_sum raises on the latter)
        out = window_sum(t, axis, window)
    else:
        prefix = torch.cumsum(t, axis)
        count = t.size(axis) - window + 1
        out = prefix.narrow(axis, window - 1, count).clone()
        out.narrow(axis, 1, count - 1).sub_(prefix.narrow(axis, 0, count - 1))
    out = out.flatten(axis - 1, axis)
    return out.permute(0, 3, 1, 2) if channels_last else out


def _spatial_sum(x: torch.Tensor, kernel: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int]) -> torch.Tensor:
    """Stride-1 window sum over H and W after zero padding (left, right, top, bottom)."""
    (kh, kw), (dh, dw), (left, right, top, bottom) = kernel, dilation, pads
    if (kh, kw) == (1, 1) and not any(pads):
        return x
    if (dh, dw) == (1, 1) and left == right <= kw // 2 and top == bottom <= kh // 2 \
            and not torch.onnx.is_in_onnx_export():
        return F.avg_pool2d(x, (kh, kw), 1, (top, left), divisor_override=1)
    if any(pads):
        x = F.pad(x, pads)
    return window_sum(window_sum(x, 2, kh, dh), 3, kw, dw)


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
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if x.dim() != 4:
        raise ValueError(f"sum_pool2d expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}")
    channels = x.size(1)
    if channels % groups:
        raise ValueError(f"sum_pool2d: {channels} input channels are not divisible by groups={groups}")
    if channel_window > 1:
        x = _channel_window_sum(x, channel_window, groups)
    return _spatial_sum(x, (kh, kw), _pad4(padding), (dh, dw))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum_pool2d(x, self.channel_window, self.kernel_size, self.padding, self.dilation, self.groups)

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
