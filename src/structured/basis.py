"""The linear algebra of structured kernels (docs/method.md sections 1 and 3), axis by axis.

A structured kernel of shape (C, N, N) with inner sizes (c, n) is vec(W) = A vec(alpha) with
A = B(C, c) (x) B(N, n) (x) B(N, n). Every operator here (compose, coefficients, projection)
is applied through this Kronecker structure: one small matmul for the two spatial axes (their
N^2 x N^2 product) and one for the channel axis (C x C at most), so the (C N^2)^2 projector is
never built. The projection (the structural loss's hot path) does not use the C x C matrix at
all: its channel part is O(C) per filter (`null_project`). The per-axis matrices are computed
once in float64 and cached per (device, dtype).
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Sequence

import torch

__all__ = [
    "box_matrix",
    "axis_operators",
    "compose",
    "coefficients",
    "project_weight",
    "residual_weight",
    "relative_residual",
    "null_project",
    "layer_residuals",
]


def box_matrix(length: int, inner: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """B(L, l): the L x l matrix whose column j has ones in rows j .. j + L - l."""
    if not 1 <= inner <= length:
        raise ValueError(f"box_matrix needs 1 <= inner <= length, got length={length}, inner={inner}")
    rows = torch.arange(length).unsqueeze(1)
    cols = torch.arange(inner).unsqueeze(0)
    return ((rows >= cols) & (rows <= cols + length - inner)).to(dtype)


def _constant(make):
    """make() evaluated outside inference mode, for the module-level caches.

    A tensor created inside ``torch.inference_mode()`` is an inference tensor; cached, it would
    break every later autograd use ("Inference tensors cannot be saved for backward") once the
    first call happened under inference mode (e.g. an evaluation before the first training step)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return make()
    return make()


@functools.lru_cache(maxsize=None)
def _axis_operators_f64(length: int, inner: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def make():
        b = box_matrix(length, inner)
        b_pinv = torch.linalg.pinv(b)  # (inner, length); B has full column rank
        return b, b_pinv, b @ b_pinv

    return _constant(make)


_DEVICE_CACHE: dict[tuple, object] = {}


def axis_operators(
    length: int, inner: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, B^+, B B^+) for one axis, cached per (length, inner, device, dtype)."""
    key = (length, inner, torch.device(device), dtype)
    ops = _DEVICE_CACHE.get(key)
    if ops is None:
        ops = _constant(lambda: tuple(t.to(device=device, dtype=dtype)
                                      for t in _axis_operators_f64(length, inner)))
        _DEVICE_CACHE[key] = ops
    return ops  # type: ignore[return-value]


def _operator(full: Sequence[int], inner: Sequence[int], which: int, ref: torch.Tensor):
    """Operator `which` (0: B, 1: B^+, 2: B B^+) for the axes `full` -> `inner`, None where no axis
    is reduced. Two spatial axes are combined into their (N^2 x N^2 at most) Kronecker product, so
    one matmul covers both; the channel axis always stays separate."""
    if tuple(full) == tuple(inner):
        return None
    key = (tuple(full), tuple(inner), which, ref.device, ref.dtype)
    op = _DEVICE_CACHE.get(key)
    if op is None:
        def make():
            mats = [axis_operators(length, l, ref.device, torch.float64)[which] if length != l else None
                    for length, l in zip(full, inner)]
            if len(mats) == 2:
                mh, mw = (torch.eye(length, dtype=torch.float64, device=ref.device) if m is None else m
                          for m, length in zip(mats, full))
                return torch.kron(mh, mw).to(ref.dtype)
            return mats[0].to(ref.dtype)

        op = _DEVICE_CACHE[key] = _constant(make)
    return op


def _periods(length: int, period: int) -> list[tuple[int, int]]:
    """(start, size) of the consecutive period-long pieces of an axis of `length` (last one short)."""
    return [(start, min(period, length - start)) for start in range(0, length, period)]


def _fold_counts(length: int, inner: int, ref: torch.Tensor) -> torch.Tensor:
    """m_k = #{i in [0, length) : i mod L == k}, k < L = length - inner + 1 (cached)."""
    key = ("fold", length, inner, ref.device, ref.dtype)
    m = _DEVICE_CACHE.get(key)
    if m is None:
        period = length - inner + 1
        m = _constant(lambda: torch.bincount(torch.arange(length) % period, minlength=period).to(
            device=ref.device, dtype=ref.dtype))
        _DEVICE_CACHE[key] = m
    return m  # type: ignore[return-value]


def null_project(x: torch.Tensor, length: int, inner: int, dim: int) -> torch.Tensor:
    """(I - B B^+) applied along axis `dim` of x (size `length`), in O(length) per fibre.

    The orthogonal complement of B(length, inner)'s columns (boxes of L = length - inner + 1
    ones starting at 0 .. inner-1) is {E z : 1^T z = 0}: every window of L consecutive entries
    sums to zero, so consecutive windows give v[i + L] = v[i], i.e. v is L-periodic (E is the
    length x L periodic-extension matrix) with a zero-sum period. E^T E = diag(m) with m_k the
    number of positions i with i mod L = k, so the projection onto that space is
    E z with z = (u - mu) / m, u = E^T x (x folded by period L and summed) and mu chosen so that
    1^T z = 0. No length x length matrix is formed: at C = 2048 channels this is what keeps the
    structural loss cheap (the dense C x C projector costs O(C^2) per output filter).
    """
    dim = dim % x.dim()
    z = _fold(x, length, inner, dim)
    return torch.cat([z.narrow(dim, 0, n) for start, n in _periods(length, z.size(dim))], dim)


def _apply(x: torch.Tensor, full: Sequence[int], inner: Sequence[int], which: int) -> torch.Tensor:
    """Apply operator `which` to the trailing structure axes of x: (..., C, N, N) or (..., F).

    Leading axes (output units, stacked layers) are folded into the rows of two plain matmuls:
    one over the flattened spatial axes, one over the channel axis. (Broadcasting a small matrix
    over many tiny batched products instead was measured 2x slower on CPU.)
    """
    if which == 2 and full[0] != inner[0]:
        # the projection's channel (or feature) axis: P_C x = x - (I - P_C) x in O(C), see null_project
        dim = -len(full)
        x = _apply(x, full, (full[0], *inner[1:]), 2)
        return x - null_project(x, full[0], inner[0], dim)
    if len(full) == 1:  # Linear
        op = _operator(full, inner, which, x)
        return x if op is None else x @ op.T
    dst = inner if which == 1 else full
    spatial = _operator(full[1:], inner[1:], which, x)
    if spatial is not None:
        x = (x.flatten(-2) @ spatial.T).unflatten(-1, tuple(dst[1:]))
    channel = _operator(full[:1], inner[:1], which, x)
    if channel is not None:
        y = x.flatten(-2).transpose(-1, -2) @ channel.T  # (..., HW, C')
        x = y.transpose(-1, -2).unflatten(-1, x.shape[-2:])
    return x


def compose(alpha: torch.Tensor, full_shape: Sequence[int]) -> torch.Tensor:
    """W = A alpha: alpha (..., c, n, n) -> W (..., C, N, N) (or (..., c) -> (..., C) for Linear)."""
    k = len(full_shape)
    return _apply(alpha, tuple(full_shape), tuple(alpha.shape[-k:]), 0)


def coefficients(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """alpha = A^+ W, per output filter: W (..., C, N, N) -> alpha (..., c, n, n)."""
    k = len(inner_shape)
    return _apply(weight, tuple(weight.shape[-k:]), tuple(inner_shape), 1)


def project_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """P W = A A^+ W: the closest structured kernel (orthogonal projection), differentiable."""
    k = len(inner_shape)
    return _apply(weight, tuple(weight.shape[-k:]), tuple(inner_shape), 2)


def residual_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """(I - A A^+) W."""
    return weight - project_weight(weight, inner_shape)


def _residual(w: torch.Tensor, full: Sequence[int], inner: Sequence[int]) -> torch.Tensor:
    """(I - A A^+) W without autograd, with as few full-size passes as possible: the spatial
    projection is one small matmul, the channel part folds the (spatially projected) kernel by
    period L = C - c + 1 and adds the expanded correction back in place (see `null_project`).

    Works in the kernel's memory order: a channels_last stack (what a channels_last model's
    weights give) is processed as (..., H, W, C) with the spatial operator as one batched
    (N^2 x N^2) @ (N^2 x C) matmul, 3-4x faster than reordering it."""
    full, inner = tuple(full), tuple(inner)
    view, dim = _physical_view(w, full)
    if view is not w:  # (..., H, W, C), contiguous
        return _residual_view(view, full, inner, cdim=dim, channels_last=True).movedim(-1, -3)
    return _residual_view(w, full, inner, cdim=dim, channels_last=False)


def _residual_view(w: torch.Tensor, full: tuple, inner: tuple, cdim: int, channels_last: bool) -> torch.Tensor:
    if full[1:] != inner[1:]:  # s = P_S W, a new tensor
        if channels_last:
            op = _operator(full[1:], inner[1:], 2, w)
            c = full[0]
            s = torch.matmul(op, w.reshape(-1, op.shape[0], c)).view(w.shape)
        else:
            s = _apply(w, full, (full[0], *inner[1:]), 2)
    else:
        s = w
    if full[0] == inner[0]:
        return w - s if s is not w else torch.zeros_like(w)
    length, period = full[0], full[0] - inner[0] + 1
    dim = cdim % w.dim()
    z = _fold(s, length, inner[0], dim)
    # R = W - P_C s = (W - s) + (I - P_C) s = (W - s) + E z
    r = torch.sub(w, s, out=s) if s is not w else torch.zeros_like(w)
    for start, n in _periods(length, period):
        r.narrow(dim, start, n).add_(z.narrow(dim, 0, n))
    return r


def _fold(x: torch.Tensor, length: int, inner: int, dim: int) -> torch.Tensor:
    """z with E z = (I - B B^+) x along `dim` (the period-L coordinates of `null_project`)."""
    period = length - inner + 1
    u = x.narrow(dim, 0, period).clone()
    for start, n in _periods(length, period)[1:]:
        u.narrow(dim, 0, n).add_(x.narrow(dim, start, n))
    inv_m = (1.0 / _fold_counts(length, inner, x)).view(period, *([1] * (x.dim() - 1 - dim)))
    mu = (u * inv_m).sum(dim, keepdim=True) / inv_m.sum()
    return (u - mu).mul_(inv_m)


class _Full(NamedTuple):
    """What `_Residuals` keeps for the backward: the full residual R = (I - P) W, in W's shape."""

    r: torch.Tensor


class _Fold(NamedTuple):
    """What `_Residuals` keeps for a channel-only structure: the period-L fold z (R = E z) of W's
    view along `dim`; the view is W's (..., H, W, C) order when `channels_last`."""

    z: torch.Tensor
    dim: int
    channels_last: bool


class _Residuals(torch.autograd.Function):
    """Per-layer relative residuals r_l = ||(I - P_l) W_l|| / ||W_l|| of a list of kernels.

    Backward uses that I - P is an orthogonal projector (self-adjoint, idempotent):
    dr/dW = R / (||R|| ||W||) - r W / ||W||^2 with R = (I - P) W: one fused pass per layer
    instead of autograd's trip back through every matmul and fold of the forward. Kernels whose
    only reduced axis is the channel axis (1x1 convs, Linear) never form R: with z the period-L
    fold of W (`_fold`), R = E z and ||R||^2 = sum_k m_k z_k^2, so the forward reads W twice and
    the backward writes the gradient once. Nothing is stacked, so the gradients are fresh tensors
    that AccumulateGrad takes without a copy. Together this keeps the regularizer at a few percent
    of a ResNet-50 training step (it was 13 % with autograd through dense C x C projectors).
    """

    @staticmethod
    def forward(ctx, specs, *weights):  # noqa: D102
        ctx.specs, saved, ratios, norms = specs, [], [], []
        for w, (full, inner) in zip(weights, specs):
            n_w = torch.linalg.vector_norm(w).clamp_min(torch.finfo(w.dtype).tiny)
            if tuple(full) == tuple(inner):
                kept = None
                n_r = torch.zeros((), dtype=w.dtype, device=w.device)
            elif tuple(full[1:]) == tuple(inner[1:]):  # channel axis only: keep the fold
                view, dim = _physical_view(w, full)
                z = _fold(view, full[0], inner[0], dim)
                m = _fold_counts(full[0], inner[0], w).view(z.shape[dim], *([1] * (z.dim() - 1 - dim)))
                n_r = (z * z * m).sum().sqrt()
                # Tagged, with the axis order it was computed in: the fold's shape is no guide to what
                # it is (with c = 1 it has W's own shape, and with C = N also W's channels_last order).
                kept = _Fold(z, dim, view is not w)
            else:
                kept = _Full(_residual(w, full, inner))
                n_r = torch.linalg.vector_norm(kept.r)
            saved.append(kept)
            ratios.append(n_r / n_w)
            norms.append((n_r, n_w))
        ctx.saved, ctx.norms = saved, norms
        ctx.save_for_backward(*weights)
        return torch.stack(ratios)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        weights = ctx.saved_tensors
        grads = []
        for i, (w, (full, inner), kept, (n_r, n_w)) in enumerate(
                zip(weights, ctx.specs, ctx.saved, ctx.norms)):
            g = grad[i]
            coef_w = g * (n_r / n_w) / n_w / n_w  # sequential divisions: n_w^2 may underflow
            if kept is None:
                out = torch.mul(w, -coef_w)
                grads.append(out)
                continue
            coef_r = torch.where(n_r > 0, g / n_r.clamp_min(torch.finfo(w.dtype).tiny) / n_w, torch.zeros_like(g))
            if isinstance(kept, _Full):
                out = torch.mul(kept.r, coef_r)
            else:  # the fold z: out = coef_r * E z, written in the axis order z was computed in
                z, dim = kept.z, kept.dim
                if kept.channels_last:  # z is (..., H, W, L): fill W's (..., H, W, C) view
                    view = torch.empty((*z.shape[:-1], full[0]), dtype=w.dtype, device=w.device)
                    out = view.movedim(-1, -3)
                else:
                    out = view = torch.empty(w.shape, dtype=w.dtype, device=w.device)
                for start, n in _periods(full[0], z.shape[dim]):
                    torch.mul(z.narrow(dim, 0, n), coef_r, out=view.narrow(dim, start, n))
            out.addcmul_(w, coef_w, value=-1)
            grads.append(out)
        return (None, *grads)


def _physical_view(w: torch.Tensor, full: Sequence[int]) -> tuple[torch.Tensor, int]:
    """(view, channel dim): a channels_last conv kernel as its contiguous (O, H, W, C) view."""
    if len(full) == 3 and w.dim() >= 4 and w.movedim(-3, -1).is_contiguous():
        return w.movedim(-3, -1), w.dim() - 1
    return w, w.dim() - len(full)


def _no_autocast(ref: torch.Tensor | None):
    """A context that disables autocast on `ref`'s device (no-op where autocast does not apply)."""
    device_type = ref.device.type if ref is not None else "cpu"
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def layer_residuals(weights: Sequence[torch.Tensor], inner_shapes: Sequence[Sequence[int]]) -> torch.Tensor:
    """(L,) relative residuals ||(I - A A^+) W|| / ||W|| of L kernels (each (O, C, N, N) or
    (O, F)), differentiable with the fused backward of `_Residuals`.

    Computed in the weights' own dtype even inside an autocast region (bf16 / fp16 mixed-precision
    training): a bf16 spatial matmul would put a ~1e-3 floor under the residual the regularizer is
    meant to drive to ~1e-5."""
    specs = [(tuple(w.shape[-len(i):]), tuple(i)) for w, i in zip(weights, inner_shapes)]
    with _no_autocast(weights[0] if weights else None):
        if any(w.requires_grad for w in weights) and torch.is_grad_enabled():
            return _Residuals.apply(specs, *weights)
        with torch.no_grad():
            return torch.stack([relative_residual(w, i) for w, i in zip(weights, inner_shapes)])


def relative_residual(weight: torch.Tensor, inner_shape: Sequence[int], batch_dims: int = 0) -> torch.Tensor:
    """||(I - A A^+) W||_F / ||W||_F, differentiable, in [0, 1] (0 for W == 0).

    With batch_dims=1, `weight` stacks several layers' kernels (G, O, ...) and the result is
    the (G,) vector of their residuals.
    """
    if batch_dims not in (0, 1):
        raise ValueError(f"relative_residual: batch_dims must be 0 or 1, got {batch_dims}")
    if weight.requires_grad and torch.is_grad_enabled():
        parts = weight.unbind(0) if batch_dims else [weight]
        out = layer_residuals(parts, [inner_shape] * len(parts))
        return out if batch_dims else out[0]
    dims = tuple(range(batch_dims, weight.dim()))
    full = tuple(weight.shape[-len(inner_shape):])
    with torch.no_grad(), _no_autocast(weight):
        num = torch.linalg.vector_norm(_residual(weight, full, tuple(inner_shape)), dim=dims)
        den = torch.linalg.vector_norm(weight, dim=dims)
    return num / den.clamp_min(torch.finfo(weight.dtype).tiny)
