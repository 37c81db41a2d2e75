"""Parameter-free sliding-window sums (the first stage of a decomposed structured layer).

The window sum over channels (within groups) and space is separable, so it is computed one axis
at a time, channels first (that shrinks the tensor). Each sum has several exact forms, listed
below with what they need; they agree up to rounding. Which one runs where several apply is a
speed choice, not part of the method: the installed :class:`SumPoolPolicy` makes it (see
:func:`set_sum_pool_policy`). The default, :data:`DEFAULT_SUM_POOL_POLICY`
(:class:`CpuSumPoolPolicy`), picks the forms measured fastest on CPU (``python -m src.bench``);
:data:`REFERENCE_SUM_POOL_POLICY` (``SumPoolPolicy()``) takes the general forms everywhere, for
tests and comparisons. Only an explicit :func:`set_sum_pool_policy` / :func:`sum_pool_policy`
changes the policy; no import does.

Channel window (:meth:`SumPoolPolicy.channel_form`), over the channels of each group:

- ``"doubling"``: :func:`window_sum`, binary doubling of shifted slices (widths 1, 2, 4, ...
  picked by the bits of w): about 2 log2(w) adds instead of w - 1. Any input, autograd.
- ``"cumsum"``: differences of a cumulative sum, taken with the channel axis innermost for
  channels_last input (the CPU scan accumulates in float64, so the differences keep float32
  accuracy at the axis lengths of real networks). Needs window <= channels per group.
- ``"ones_conv"``: one grouped 1 x 1 conv with the fixed 0/1 band kernel
  :func:`channel_window_ones` (output channel a of a group sums input channels a .. a + w - 1):
  a single Conv node for compilers and ONNX Runtime. Any input, autograd.

Spatial window, any kernel, padding and dilation (autograd, ``torch.compile``): ``"padded"``:
explicit zero padding, then :func:`window_sum` per axis: plain pads, slices and adds, which
inductor fuses. Two special cases offer more forms:

- 2 x 2, dilation 1, padding <= 1 (every 3x3 -> 2x2 structured conv), at inference (no autograd,
  not compiling or tracing; :meth:`SumPoolPolicy.pool2x2_form`): ``"padded"``; ``"pair_adds"``:
  one add pass per axis written straight into the output, edge rows copied (no padded copy of
  the input); with symmetric padding also ``"avg_pool"``: one ``avg_pool2d`` call with
  ``divisor_override=1``, and ``"ones_conv"``: one depthwise conv with a ones kernel.
- during ONNX export, dilation 1, symmetric padding <= kernel // 2
  (:meth:`SumPoolPolicy.export_form`): ``"padded"``, or ``"onnx_average_pool"``: AveragePool
  (padding counted) times the window size, exact for power-of-two windows such as 2 x 2, within
  one rounding otherwise. (Exporters silently drop ``avg_pool2d``'s ``divisor_override``, so
  ``"avg_pool"`` is never used there.)

Two more spatial forms hold for any kernel, padding and context (eager, autograd,
``torch.compile``, ONNX export), dilation 1 for the first: ``"avg_pool_area"``: ``avg_pool2d``
with the padding counted, times the window area (exact for power-of-two areas such as 2 x 2,
within one rounding otherwise; asymmetric or wide padding is applied by an explicit pad first),
and ``"depthwise"``: one depthwise conv with a ones kernel (:func:`spatial_window_ones`), dilated
like the window. :func:`window_mean2d` is the window mean (the sum divided by the area), for
deploy forms that fold the area into the following conv's kernel.

The explicit-form functions :func:`channel_window_sum` and :func:`spatial_window_sum` run a named
form regardless of the policy (raising ValueError where it does not apply); the deploy layer's
per-layer plans (src/deploy/forms.py) use them. :data:`CHANNEL_FORMS` and
:data:`SPATIAL_FORMS` list the names.

No pooling kernel is used for channels (``avg_pool3d`` on an unsqueezed tensor is several times
slower than the conv it replaces). Every form keeps the input's memory format.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._util import constant, is_channels_last, pair

__all__ = ["window_sum", "sum_pool2d", "SumPool", "FeatureSumPool", "SumPoolPolicy", "CpuSumPoolPolicy",
           "CPU_SUM_POOL_POLICY", "REFERENCE_SUM_POOL_POLICY", "DEFAULT_SUM_POOL_POLICY", "get_sum_pool_policy",
           "set_sum_pool_policy", "sum_pool_policy", "CHANNEL_FORMS", "SPATIAL_FORMS", "channel_window_ones",
           "spatial_window_ones", "channel_window_sum", "spatial_window_sum", "window_mean2d"]

CHANNEL_FORMS = ("doubling", "cumsum", "ones_conv")
"""The exact forms of the channel window sum (see the module docstring)."""
SPATIAL_FORMS = ("padded", "pair_adds", "avg_pool", "ones_conv", "avg_pool_area", "depthwise")
"""The exact forms of the spatial window sum; the first four are those the policy picks among
(``pair_adds``, ``avg_pool`` and ``ones_conv`` at inference, 2 x 2 windows, dilation 1 only)."""


# ------------------------------------------------------------------------------------------------
# The policy: which exact form runs where several apply
# ------------------------------------------------------------------------------------------------


class SumPoolPolicy:
    """Which exact form computes a window sum where several apply (see the module docstring for
    the forms and what each needs). A speed choice only: every answer computes the same sums, up
    to rounding. This base class is the reference policy, the general forms everywhere
    (:data:`REFERENCE_SUM_POOL_POLICY`); :class:`CpuSumPoolPolicy` is the default. Subclass it and
    install it with :func:`set_sum_pool_policy` or :func:`sum_pool_policy`. An answer that does
    not apply raises ValueError."""

    def channel_form(self, x: torch.Tensor, window: int, groups: int) -> str:
        """``"doubling"``, ``"cumsum"`` or ``"ones_conv"``, for the window sum over the channels of each of `groups`
        groups of x (B, C, H, W). ``"cumsum"`` with a window longer than a group falls back to
        ``"doubling"`` (which raises)."""
        return "doubling"

    def pool2x2_form(self, x: torch.Tensor, pads: tuple[int, int, int, int]) -> str:
        """For the 2 x 2, dilation-1 window sum of x (B, C, H, W), H, W >= 1, at inference, with
        zero padding `pads` = (left, right, top, bottom), each <= 1: ``"padded"``,
        ``"pair_adds"``, or, with symmetric padding only, ``"avg_pool"`` or ``"ones_conv"``."""
        return "padded"

    def export_form(self, kernel: tuple[int, int], pads: tuple[int, int, int, int]) -> str:
        """During ONNX export, for a dilation-1 window sum with symmetric padding <= kernel // 2:
        ``"padded"``, ``"onnx_average_pool"`` (= ``"avg_pool_area"``) or ``"depthwise"``."""
        return "padded"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True)
class CpuSumPoolPolicy(SumPoolPolicy):
    """The sum-pool forms measured fastest on this project's CPU (eager PyTorch with oneDNN,
    interleaved timing as in ``python -m src.bench``, transparent huge pages on): the default
    policy. Each field is a measured crossover; override one with
    ``set_sum_pool_policy(dataclasses.replace(CPU_SUM_POOL_POLICY, ...))``."""

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
"""The CPU-tuned policy with its measured thresholds."""
REFERENCE_SUM_POOL_POLICY = SumPoolPolicy()
"""The general forms everywhere (what the exactness tests compare every other form against)."""
DEFAULT_SUM_POOL_POLICY: SumPoolPolicy = CPU_SUM_POOL_POLICY
"""The policy installed when src.structured is imported: the CPU-fast exact forms."""

_policy: SumPoolPolicy = DEFAULT_SUM_POOL_POLICY


def get_sum_pool_policy() -> SumPoolPolicy:
    """The policy the sum-pools consult now."""
    return _policy


def set_sum_pool_policy(policy: SumPoolPolicy) -> SumPoolPolicy:
    """Install `policy` for every sum-pool of the process; returns the previous one."""
    global _policy
    if not isinstance(policy, SumPoolPolicy):
        raise TypeError(f"set_sum_pool_policy: expected a SumPoolPolicy, got {type(policy).__name__}")
    previous, _policy = _policy, policy
    return previous


@contextlib.contextmanager
def sum_pool_policy(policy: SumPoolPolicy) -> Iterator[SumPoolPolicy]:
    """`policy` installed inside the block, the previous one restored after it."""
    previous = set_sum_pool_policy(policy)
    try:
        yield policy
    finally:
        set_sum_pool_policy(previous)


def _not_applicable(kind: str, form: str, where: str) -> ValueError:
    return ValueError(f"sum-pool policy {_policy!r}: {kind} form {form!r} does not apply to {where}")


# ------------------------------------------------------------------------------------------------
# Exact forms
# ------------------------------------------------------------------------------------------------


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


def _needs_grad(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


def _cumsum_window_sum(t: torch.Tensor, axis: int, window: int) -> torch.Tensor:
    """Form "cumsum": the window sum along `axis` as differences of a cumulative sum (window <=
    the axis length)."""
    prefix = torch.cumsum(t, axis)
    count = t.size(axis) - window + 1
    first, rest = prefix.narrow(axis, window - 1, 1), (prefix.narrow(axis, window, count - 1),
                                                       prefix.narrow(axis, 0, count - 1))
    if _needs_grad(t) or torch.compiler.is_compiling() or torch.jit.is_tracing():
        # autograd (out= is not differentiable), compile and export (out= into a view of an
        # empty tensor specialises the traced shapes): one concatenation instead
        return torch.cat([first, rest[0] - rest[1]], axis)
    # inference: one output, no torch.cat pass (-17 ms of a 610 ms ResNet-50 forward, batch 16)
    out = torch.empty(prefix.narrow(axis, 0, count).shape, dtype=prefix.dtype, device=prefix.device)
    out.narrow(axis, 0, 1).copy_(first)
    torch.sub(*rest, out=out.narrow(axis, 1, count - 1))
    return out


def _channel_window_sum(x: torch.Tensor, window: int, groups: int) -> torch.Tensor:
    """Window sum over the channels of a (B, C, H, W) tensor within each group, keeping the
    memory format, in the form the policy picks. A channels_last tensor is processed as its
    (B, H, W, G, C/G) view, so the channel axis is the contiguous one."""
    form = _policy.channel_form(x, window, groups)
    if form == "ones_conv":
        return _ones_conv_channel_sum(x, window, groups)
    channels_last = is_channels_last(x)
    t = x.permute(0, 2, 3, 1) if channels_last else x
    axis = 3 if channels_last else 1
    t = t.unflatten(axis, (groups, t.size(axis) // groups))
    axis += 1
    if form == "cumsum" and window <= t.size(axis):
        out = _cumsum_window_sum(t, axis, window)
    elif form in ("doubling", "cumsum"):
        out = window_sum(t, axis, window)  # (raises for a window longer than the group)
    else:
        raise _not_applicable("channel", form, f"a channel window of {window}")
    out = out.flatten(axis - 1, axis)
    return out.permute(0, 3, 1, 2) if channels_last else out


def _padded_sum(x: torch.Tensor, kernel: tuple[int, int], pads: tuple[int, int, int, int],
                dilation: tuple[int, int]) -> torch.Tensor:
    """Form "padded": explicit zero padding (left, right, top, bottom), then a window sum per axis."""
    if any(pads):
        x = F.pad(x, pads)
    return window_sum(window_sum(x, 2, kernel[0], dilation[0]), 3, kernel[1], dilation[1])


def _pair_sum(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Window-2 sum along `dim` of x zero-padded by (before, after) <= 1: one add pass written
    straight into the output, whose edge rows are copies of x's (no padded copy of x). Not
    differentiable (out=)."""
    length = x.size(dim)
    shape = list(x.shape)
    shape[dim] = length - 1 + before + after
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    torch.add(x.narrow(dim, 0, length - 1), x.narrow(dim, 1, length - 1),
              out=out.narrow(dim, before, length - 1))
    if before:
        out.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
    if after:
        out.narrow(dim, -1, 1).copy_(x.narrow(dim, length - 1, 1))
    return out


_ONES: dict[tuple, torch.Tensor] = {}  # the ones kernels of form "ones_conv", per (channels, dtype, device)


def _ones_conv_sum(x: torch.Tensor, pad_hw: tuple[int, int]) -> torch.Tensor:
    """Form "ones_conv": the stride-1 2 x 2 window sum as a depthwise conv with a ones kernel,
    symmetric zero padding pad_hw."""
    channels = x.size(1)
    key = (channels, x.dtype, x.device)
    ones = _ONES.get(key)
    if ones is None:  # an ordinary tensor even when first made inside inference_mode
        ones = _ONES[key] = constant(lambda: torch.ones(
            channels, 1, 2, 2, dtype=x.dtype, device=x.device).contiguous(memory_format=torch.channels_last))
    return F.conv2d(x, ones, None, 1, pad_hw, 1, channels)


def _pool2x2(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """The stride-1 2 x 2, dilation-1 window sum of an inference input with zero padding `pads`
    (each <= 1), in the form the policy picks."""
    form = _policy.pool2x2_form(x, pads)
    left, right, top, bottom = pads
    if form == "pair_adds":
        return _pair_sum(_pair_sum(x, 2, top, bottom), 3, left, right)
    if form == "padded":
        return _padded_sum(x, (2, 2), pads, (1, 1))
    if left != right or top != bottom or form not in ("avg_pool", "ones_conv"):
        raise _not_applicable("2 x 2", form, f"padding {pads}")
    if form == "avg_pool":
        return F.avg_pool2d(x, 2, 1, (top, left), divisor_override=1)
    return _ones_conv_sum(x, (top, left))


def _spatial_sum(x: torch.Tensor, kernel: tuple[int, int], pads: tuple[int, int, int, int],
                 dilation: tuple[int, int]) -> torch.Tensor:
    """Stride-1 window sum over H and W after zero padding (left, right, top, bottom). The
    checks are ordered cheapest first: at batch 1 they are a visible part of a layer's time."""
    (kh, kw), (left, right, top, bottom) = kernel, pads
    if kernel == (1, 1) and not any(pads):
        return x
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # torch.compile / export / ONNX export
        if dilation == (1, 1) and left == right <= kw // 2 and top == bottom <= kh // 2 \
                and torch.onnx.is_in_onnx_export():
            form = _policy.export_form(kernel, pads)
            if form == "onnx_average_pool":  # ONNX has no sum-pool
                return F.avg_pool2d(x, kernel, 1, (top, left), count_include_pad=True) * (kh * kw)
            if form == "depthwise":
                return _depthwise_sum(x, kernel, pads, dilation)
            if form != "padded":
                raise _not_applicable("export", form, f"a {kh} x {kw} window")
    elif kernel == (2, 2) and dilation == (1, 1) and max(pads) <= 1 and not _needs_grad(x):
        return _pool2x2(x, pads)
    return _padded_sum(x, kernel, pads, dilation)


def _sum_pool(x: torch.Tensor, channel_window: int, kernel: tuple[int, int],
              pads: tuple[int, int, int, int], dilation: tuple[int, int], groups: int) -> torch.Tensor:
    if channel_window > 1:
        x = _channel_window_sum(x, channel_window, groups)
    return _spatial_sum(x, kernel, pads, dilation)


# ------------------------------------------------------------------------------------------------
# Fixed-kernel forms, and every form by name
# ------------------------------------------------------------------------------------------------


def channel_window_ones(channels: int, window: int, groups: int = 1, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The 0/1 kernel (groups * c, channels / groups, 1, 1), c = channels / groups - window + 1, of
    the channel window sum as a grouped 1 x 1 conv: output channel a of each group sums that
    group's input channels a .. a + window - 1."""
    per_group = channels // groups
    count = per_group - window + 1
    if channels % groups or window < 1 or count < 1:
        raise ValueError(f"channel_window_ones: a window of {window} over {channels} channels in {groups} "
                         f"group(s) does not fit")
    rows = torch.arange(count).unsqueeze(1)
    cols = torch.arange(per_group).unsqueeze(0)
    band = ((cols >= rows) & (cols < rows + window)).to(dtype or torch.get_default_dtype())
    return band.repeat(groups, 1)[:, :, None, None].to(device)


def spatial_window_ones(channels: int, kernel: int | Sequence[int], dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The ones kernel (channels, 1, kh, kw) of the spatial window sum as a depthwise conv."""
    kh, kw = pair(kernel)
    return torch.ones(channels, 1, kh, kw, dtype=dtype, device=device)


_KERNELS: dict[tuple, torch.Tensor] = {}  # fixed 0/1 kernels of the functional forms, per shape/dtype/device


def _cached(key: tuple, make) -> torch.Tensor:
    kernel = _KERNELS.get(key)
    if kernel is None:  # an ordinary tensor even when first made inside inference_mode
        kernel = _KERNELS[key] = constant(make)
    return kernel


def _like(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A fixed kernel in x's dtype, device and memory format (a no-op when it already is)."""
    kernel = kernel.to(dtype=x.dtype, device=x.device)
    return kernel.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else kernel


def _ones_conv_channel_sum(x: torch.Tensor, window: int, groups: int,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """Form "ones_conv" of the channel window: one grouped 1 x 1 conv with the 0/1 band kernel."""
    if weight is None:
        channels = x.size(1)
        weight = _cached(("channel", channels, window, groups, x.dtype, x.device, is_channels_last(x)),
                         lambda: _like(channel_window_ones(channels, window, groups), x))
    return F.conv2d(x, weight, None, 1, 0, 1, groups)


def _depthwise_sum(x: torch.Tensor, kernel: tuple[int, int], pads: tuple[int, int, int, int],
                   dilation: tuple[int, int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """Form "depthwise": the spatial window sum as one depthwise conv with a ones kernel (symmetric
    padding inside the conv, any other by an explicit pad first)."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        conv_pad = (top, left)
    else:
        x, conv_pad = F.pad(x, pads), (0, 0)
    if weight is None:
        channels = x.size(1)
        weight = _cached(("depthwise", channels, kernel, x.dtype, x.device, is_channels_last(x)),
                         lambda: _like(spatial_window_ones(channels, kernel), x))
    return F.conv2d(x, weight, None, 1, conv_pad, dilation, x.size(1))


def window_mean2d(x: torch.Tensor, kernel: int | Sequence[int], padding: int | Sequence[int] = 0) -> torch.Tensor:
    """The stride-1, dilation-1 window mean over H and W after zero padding (the zeros counted):
    the window sum divided by the window area, as one ``avg_pool2d`` (padding symmetric and <= half
    the window) or an explicit pad then ``avg_pool2d``."""
    kh, kw = pair(kernel)
    left, right, top, bottom = _pad4(padding)
    if left == right <= kw // 2 and top == bottom <= kh // 2:
        return F.avg_pool2d(x, (kh, kw), 1, (top, left), count_include_pad=True)
    return F.avg_pool2d(F.pad(x, (left, right, top, bottom)), (kh, kw), 1, 0)


def channel_window_sum(x: torch.Tensor, window: int, groups: int = 1, form: str = "doubling",
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Stride-1 window sum over the channels of each of `groups` groups of x (B, C, H, W) in the
    named exact `form` (:data:`CHANNEL_FORMS`), whatever the installed policy; keeps x's memory
    format. ``"ones_conv"`` takes its 0/1 kernel as `weight` (a module's buffer) or makes it.
    ValueError where the form does not apply."""
    if x.dim() != 4 or x.size(1) % groups:
        raise ValueError(f"channel_window_sum: expected a 4-D input with channels divisible by groups={groups}, "
                         f"got shape {tuple(x.shape)}")
    if window == 1:
        return x
    if form == "ones_conv":
        return _ones_conv_channel_sum(x, window, groups, weight)
    if form not in CHANNEL_FORMS:
        raise ValueError(f"channel_window_sum: unknown form {form!r}; choose from {CHANNEL_FORMS}")
    channels_last = is_channels_last(x)
    t = x.permute(0, 2, 3, 1) if channels_last else x
    axis = 3 if channels_last else 1
    t = t.unflatten(axis, (groups, t.size(axis) // groups))
    axis += 1
    if window > t.size(axis):
        raise ValueError(f"channel_window_sum: window {window} is longer than a group ({t.size(axis)} channels)")
    out = _cumsum_window_sum(t, axis, window) if form == "cumsum" else window_sum(t, axis, window)
    out = out.flatten(axis - 1, axis)
    return out.permute(0, 3, 1, 2) if channels_last else out


def spatial_window_sum(x: torch.Tensor, kernel: int | Sequence[int], padding: int | Sequence[int] = 0,
                       dilation: int | Sequence[int] = 1, form: str = "padded",
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Stride-1 window sum over H and W of x (B, C, H, W) after zero padding, in the named exact
    `form` (:data:`SPATIAL_FORMS`), whatever the installed policy. ``"depthwise"`` takes its ones
    kernel as `weight` or makes it. ValueError where the form does not apply: ``"pair_adds"``,
    ``"avg_pool"`` and ``"ones_conv"`` need a 2 x 2, dilation-1 window with padding <= 1 (the last
    two symmetric) and no autograd; ``"avg_pool"`` is refused during ONNX export (exporters drop
    its ``divisor_override``); ``"avg_pool_area"`` needs dilation 1."""
    kernel, pads, dilation = pair(kernel), _pad4(padding), pair(dilation)
    if x.dim() != 4:
        raise ValueError(f"spatial_window_sum expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}")
    if form == "padded":
        return _padded_sum(x, kernel, pads, dilation)
    if form == "depthwise":
        return _depthwise_sum(x, kernel, pads, dilation, weight)
    if form == "avg_pool_area":
        if dilation != (1, 1):
            raise ValueError(f"spatial_window_sum: form 'avg_pool_area' needs dilation 1, got {dilation}")
        return window_mean2d(x, kernel, pads) * (kernel[0] * kernel[1])
    if form not in SPATIAL_FORMS:
        raise ValueError(f"spatial_window_sum: unknown form {form!r}; choose from {SPATIAL_FORMS}")
    left, right, top, bottom = pads
    if kernel != (2, 2) or dilation != (1, 1) or max(pads) > 1 or _needs_grad(x) \
            or (form != "pair_adds" and (left != right or top != bottom)):
        raise ValueError(f"spatial_window_sum: form {form!r} needs a 2 x 2, dilation-1 window, padding <= 1"
                         f"{'' if form == 'pair_adds' else ' (symmetric)'} and no autograd; got kernel {kernel}, "
                         f"padding {pads}, dilation {dilation}")
    if form == "pair_adds":
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            raise ValueError("spatial_window_sum: form 'pair_adds' (out= writes) cannot be compiled or traced")
        return _pair_sum(_pair_sum(x, 2, top, bottom), 3, left, right)
    if form == "avg_pool":
        if torch.onnx.is_in_onnx_export():
            raise ValueError("spatial_window_sum: form 'avg_pool' (divisor_override) is not exportable to ONNX; "
                             "use 'avg_pool_area'")
        return F.avg_pool2d(x, 2, 1, (top, left), divisor_override=1)
    return _ones_conv_sum(x, (top, left))


# ------------------------------------------------------------------------------------------------
# The sum-pool, functional and as modules
# ------------------------------------------------------------------------------------------------


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
    if x.dim() != 4:
        raise ValueError(f"sum_pool2d expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}")
    channels = x.size(1)
    if channels % groups:
        raise ValueError(f"sum_pool2d: {channels} input channels are not divisible by groups={groups}")
    return _sum_pool(x, channel_window, pair(kernel_size), _pad4(padding), pair(dilation), groups)


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
        self.kernel_size = pair(kernel_size)
        self.padding = _pad4(padding)
        self.dilation = pair(dilation)
        self.groups = int(groups)
        left, right, top, bottom = self.padding
        # (pad_h, pad_w) when this pool is the common 2 x 2, symmetric-padding, channel-free one,
        # whose inference inputs go straight to _pool2x2 (see _spatial_sum), else None
        self._pool2x2_pad = ((top, left) if self.channel_window == 1 and self.kernel_size == (2, 2)
                             and self.dilation == (1, 1) and left == right <= 1 and top == bottom <= 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fast path first, with the cheapest checks (at batch 1 a decomposed ResNet-56 layer's
        # Python overhead is a visible share of its time): the same call that _spatial_sum makes
        # for these inputs, without the generic dispatch.
        if self._pool2x2_pad is not None and not x.requires_grad and x.dim() == 4 \
                and not torch.compiler.is_compiling() and not torch._C._get_tracing_state():
            return _pool2x2(x, self.padding)
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
