"""The linear algebra of structured kernels, in the order of docs/method.md sections 1 and 3.

The whole method in dense form is three lines (tests/test_basis.py checks everything here
against them)::

    A = kron(kron(B(C, c), B(N, n)), B(N, n))       # vec(W) = A vec(alpha)
    alpha = pinv(A) @ vec(W);  P = A @ pinv(A)       # coefficients, projector
    r = ||(I - P) vec(W)|| / ||vec(W)||              # the structural residual

This module computes the same thing without ever forming the (C N^2) x (C N^2) matrices:

1. Per axis, the box basis B (`box_matrix`) and the three matrices made from it (`axis_operators`:
   `box` B, `pinv` B^+, `projector` B B^+), computed once in float64 and cached per device and dtype.
2. The Kronecker product, applied factor by factor: A's spatial factor B(N, n) (x) B(N, n) is one
   N^2 x N^2 matmul over the two flattened spatial axes, its channel factor B(C, c) one matmul over
   the channel axis (`_kron_matmul`). `compose` = A alpha, `coefficients` = A^+ W,
   `project_weight` = P W.
3. The channel projector's complement I - B B^+ without a C x C matrix: `_fold` folds a vector
   onto the (L-periodic, zero-sum) null space of B^T in O(C); `null_project` expands the fold.
4. The structural residual (I - P) W: one implementation (`_residual`), which keeps either R itself
   or, for a channel-only structure, only its fold; the per-layer relative residuals with their
   fused backward (`_Residuals`, `layer_residuals`, `relative_residual`).

(B^T, the window sum, is what the deploy form's sum-pool computes, src/structured/sumpool.py; B is
its adjoint: it spreads each coefficient over a box.)
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple, Sequence

import torch

from ._util import constant

__all__ = [
    "box_matrix",
    "AxisOperators",
    "axis_operators",
    "compose",
    "coefficients",
    "project_weight",
    "residual_weight",
    "null_project",
    "layer_residuals",
    "relative_residual",
]

# ------------------------------------------------------------------------------------------------
# 1. The box basis, per axis
# ------------------------------------------------------------------------------------------------


def box_matrix(length: int, inner: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """B(L, l): the L x l matrix whose column j has ones in rows j .. j + L - l."""
    if not 1 <= inner <= length:
        raise ValueError(f"box_matrix needs 1 <= inner <= length, got length={length}, inner={inner}")
    rows = torch.arange(length).unsqueeze(1)
    cols = torch.arange(inner).unsqueeze(0)
    return ((rows >= cols) & (rows <= cols + length - inner)).to(dtype)


class AxisOperators(NamedTuple):
    """The matrices of one axis of length T with inner size t."""

    box: torch.Tensor  # B (T x t): coefficients -> values; column j is the box of rows j .. j + T - t
    pinv: torch.Tensor  # B^+ (t x T): values -> least-squares coefficients (B has full column rank)
    projector: torch.Tensor  # B B^+ (T x T): the orthogonal projector onto the span of the boxes


# Constant tensors (axis operators, Kronecker factors, fold counts), keyed by what they are and by
# (device, dtype); all made by `constant`, so never inference tensors.
_DEVICE_CACHE: dict[tuple, object] = {}


@functools.lru_cache(maxsize=None)
def _axis_operators_f64(length: int, inner: int) -> AxisOperators:
    def make():
        b = box_matrix(length, inner)
        b_pinv = torch.linalg.pinv(b)
        return AxisOperators(b, b_pinv, b @ b_pinv)

    return constant(make)


def axis_operators(
    length: int, inner: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> AxisOperators:
    """(B, B^+, B B^+) for one axis (fields `box`, `pinv`, `projector`), computed in float64 and
    cached per (length, inner, device, dtype)."""
    key = (length, inner, torch.device(device), dtype)
    ops = _DEVICE_CACHE.get(key)
    if ops is None:
        ops = constant(lambda: AxisOperators(*(t.to(device=device, dtype=dtype)
                                               for t in _axis_operators_f64(length, inner))))
        _DEVICE_CACHE[key] = ops
    return ops  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# 2. The Kronecker product A = B(C, c) (x) B(N, n) (x) B(N, n), applied factor by factor
# ------------------------------------------------------------------------------------------------


def _factor(full: tuple, inner: tuple, kind: str, ref: torch.Tensor) -> torch.Tensor | None:
    """The `kind` matrix ("box", "pinv" or "projector") of one Kronecker factor of A, in ref's
    device and dtype: for the channel factor (one axis) that axis's matrix; for the spatial factor
    (two axes) the Kronecker product of both axes' matrices (N^2 x N^2 at most; an axis that is not
    reduced contributes I). None where no axis of the factor is reduced (the factor is I)."""
    if full == inner:
        return None
    key = (full, inner, kind, ref.device, ref.dtype)
    op = _DEVICE_CACHE.get(key)
    if op is None:
        def make():
            mats = [getattr(axis_operators(length, l, ref.device), kind) if length != l
                    else torch.eye(length, dtype=torch.float64, device=ref.device)
                    for length, l in zip(full, inner)]
            return functools.reduce(torch.kron, mats).to(ref.dtype)

        op = _DEVICE_CACHE[key] = constant(make)
    return op  # type: ignore[return-value]


def _factors(full: tuple, inner: tuple, kind: str, ref: torch.Tensor):
    """(channel factor, spatial factor) of A's `kind` operator (None: identity)."""
    return _factor(full[:1], inner[:1], kind, ref), _factor(full[1:], inner[1:], kind, ref)


def _kron_matmul(x: torch.Tensor, channel: torch.Tensor | None, spatial: torch.Tensor | None,
                 spatial_out: tuple) -> torch.Tensor:
    """vec(Y) = (M_C (x) M_S) vec(X) for every leading index of x: X (..., C, H, W), or (..., F)
    for Linear (no spatial factor, spatial_out = ()).

    With X seen as a C x (H W) matrix this is M_C X M_S^T: one matmul over the flattened spatial
    axes, then one over the channel axis, with the leading axes (output units, stacked layers)
    folded into the rows. (Broadcasting a small matrix over many tiny batched products instead was
    measured 2x slower on CPU.)"""
    if spatial is not None:
        x = (x.flatten(-2) @ spatial.T).unflatten(-1, spatial_out)
    if channel is not None:
        if not spatial_out:
            return x @ channel.T
        y = x.flatten(-2).transpose(-1, -2) @ channel.T  # (..., HW, C')
        x = y.transpose(-1, -2).unflatten(-1, x.shape[-2:])
    return x


def compose(alpha: torch.Tensor, full_shape: Sequence[int]) -> torch.Tensor:
    """W = A alpha: alpha (..., c, n, n) -> W (..., C, N, N) (or (..., c) -> (..., C) for Linear)."""
    full = tuple(full_shape)
    inner = tuple(alpha.shape[-len(full):])
    return _kron_matmul(alpha, *_factors(full, inner, "box", alpha), full[1:])


def coefficients(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """alpha = A^+ W, per output filter: W (..., C, N, N) -> alpha (..., c, n, n)."""
    inner = tuple(inner_shape)
    full = tuple(weight.shape[-len(inner):])
    return _kron_matmul(weight, *_factors(full, inner, "pinv", weight), inner[1:])


def project_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """P W = A A^+ W: the closest structured kernel (orthogonal projection), differentiable.

    P = P_C (x) P_S: the spatial projector is one matmul; the channel projector is applied as
    P_C x = x - (I - P_C) x with the O(C) fold (`null_project`), never as a C x C matrix."""
    inner = tuple(inner_shape)
    full = tuple(weight.shape[-len(inner):])
    x = _kron_matmul(weight, None, _factor(full[1:], inner[1:], "projector", weight), full[1:])  # P_S W
    if full[0] == inner[0]:
        return x
    return x - null_project(x, full[0], inner[0], -len(full))


def residual_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """(I - A A^+) W, by definition (differentiable). The structural loss computes the residual's
    norm with `_residual` instead, which keeps only what it needs."""
    return weight - project_weight(weight, inner_shape)


# ------------------------------------------------------------------------------------------------
# 3. The channel complement I - B B^+: the fold onto the null space of B^T, O(C) per fibre
# ------------------------------------------------------------------------------------------------


def _periods(length: int, period: int) -> list[tuple[int, int]]:
    """(start, size) of the consecutive period-long pieces of an axis of `length` (last one short)."""
    return [(start, min(period, length - start)) for start in range(0, length, period)]


def _fold_counts(length: int, inner: int, ref: torch.Tensor) -> torch.Tensor:
    """m_k = #{i in [0, length) : i mod L == k}, k < L = length - inner + 1 (cached)."""
    key = ("fold", length, inner, ref.device, ref.dtype)
    m = _DEVICE_CACHE.get(key)
    if m is None:
        period = length - inner + 1
        m = constant(lambda: torch.bincount(torch.arange(length) % period, minlength=period).to(
            device=ref.device, dtype=ref.dtype))
        _DEVICE_CACHE[key] = m
    return m  # type: ignore[return-value]


def _fold(x: torch.Tensor, length: int, inner: int, dim: int) -> torch.Tensor:
    """The fold z (period L = length - inner + 1 along `dim`) with E z = (I - B B^+) x.

    The orthogonal complement of B(length, inner)'s columns is {E z : 1^T z = 0}: every window of
    L consecutive entries sums to zero, so v[i + L] = v[i] (E: the length x L periodic extension)
    and the period sums to zero. With E^T E = diag(m), the projection onto it is
    z = (u - mu) / m, u = E^T x (x folded by period L and summed), mu such that 1^T z = 0."""
    period = length - inner + 1
    u = x.narrow(dim, 0, period).clone()
    for start, n in _periods(length, period)[1:]:
        u.narrow(dim, 0, n).add_(x.narrow(dim, start, n))
    inv_m = (1.0 / _fold_counts(length, inner, x)).view(period, *([1] * (x.dim() - 1 - dim)))
    mu = (u * inv_m).sum(dim, keepdim=True) / inv_m.sum()
    return (u - mu).mul_(inv_m)


def null_project(x: torch.Tensor, length: int, inner: int, dim: int) -> torch.Tensor:
    """(I - B B^+) x along axis `dim` of x (size `length`), B = B(length, inner): E z with z the
    fold (`_fold`), O(length) per fibre. No length x length matrix is formed: at C = 2048 channels
    this is what keeps the structural loss cheap (the dense C x C projector costs O(C^2) per
    output filter)."""
    dim = dim % x.dim()
    z = _fold(x, length, inner, dim)
    return torch.cat([z.narrow(dim, 0, n) for start, n in _periods(length, z.size(dim))], dim)


# ------------------------------------------------------------------------------------------------
# 4. The structural residual and the per-layer relative residuals (the loss)
# ------------------------------------------------------------------------------------------------


def _kernel_view(w: torch.Tensor, full: tuple) -> tuple[torch.Tensor, int, bool]:
    """(view, channel dim, channels_last): W in its physical axis order. A channels_last conv
    kernel (what a channels_last model's weights are) is processed as its contiguous
    (..., H, W, C) view, 3-4x faster than reordering it; anything else as it is."""
    if len(full) == 3 and w.dim() >= 4 and w.movedim(-3, -1).is_contiguous():
        return w.movedim(-3, -1), w.dim() - 1, True
    return w, w.dim() - len(full), False


class _Full(NamedTuple):
    """A residual kept in full: R = (I - P) W, in W's shape."""

    r: torch.Tensor


class _Fold(NamedTuple):
    """A channel-only structure's residual kept as its fold: R = E z along `dim` of W's physical
    view, which is W's (..., H, W, C) order when `channels_last`. The fold's shape is no guide to
    what it is (with c = 1 it has W's own shape, and with C = N also W's channels_last order),
    hence the tag."""

    z: torch.Tensor
    dim: int
    channels_last: bool


def _residual(w: torch.Tensor, full: tuple, inner: tuple) -> _Full | _Fold | None:
    """(I - P) W without autograd: None when nothing is reduced (R = 0); the fold z alone for a
    channel-only structure (1x1 convs, Linear, n = N), since R = E z; otherwise R, with as few
    full-size passes as possible: R = (W - P_S W) + E z, z the fold of P_S W (docs/method.md
    section 3), the spatial projection one small matmul in W's physical order, E z added in place."""
    if full == inner:
        return None
    view, dim, channels_last = _kernel_view(w, full)
    if full[1:] == inner[1:]:
        return _Fold(_fold(view, full[0], inner[0], dim), dim, channels_last)
    op = _factor(full[1:], inner[1:], "projector", view)
    if channels_last:  # (..., H, W, C): one batched (N^2 x N^2) @ (N^2 x C) matmul
        s = torch.matmul(op, view.reshape(-1, op.shape[0], full[0])).view(view.shape)
    else:
        s = _kron_matmul(view, None, op, full[1:])
    if full[0] == inner[0]:
        r = view - s
    else:
        z = _fold(s, full[0], inner[0], dim)
        r = torch.sub(view, s, out=s)
        for start, n in _periods(full[0], z.size(dim)):
            r.narrow(dim, start, n).add_(z.narrow(dim, 0, n))
    return _Full(r.movedim(-1, -3) if channels_last else r)


def _residual_norm(kept: _Full | _Fold | None, w: torch.Tensor, full: tuple, inner: tuple,
                   dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """||R||_F over `dims` (all when None) of a residual from `_residual`; for a fold,
    ||E z||^2 = sum_k m_k z_k^2."""
    if kept is None:
        return torch.zeros(w.shape[:dims[0]] if dims else (), dtype=w.dtype, device=w.device)
    if isinstance(kept, _Full):
        return torch.linalg.vector_norm(kept.r, dim=dims)
    z, dim = kept.z, kept.dim
    m = _fold_counts(full[0], inner[0], w).view(z.shape[dim], *([1] * (z.dim() - 1 - dim)))
    sq = z * z * m
    return (sq.sum() if dims is None else sq.sum(dims)).sqrt()


class _Residuals(torch.autograd.Function):
    """Per-layer relative residuals r_l = ||(I - P_l) W_l|| / ||W_l|| of a list of kernels.

    Backward uses that I - P is an orthogonal projector (self-adjoint, idempotent):
    dr/dW = R / (||R|| ||W||) - r W / ||W||^2 with R = (I - P) W: one fused pass per layer
    instead of autograd's trip back through every matmul and fold of the forward. A channel-only
    structure's R is never formed: the forward keeps its fold z and the backward writes E z
    (scaled) straight into the gradient. Nothing is stacked, so the gradients are fresh tensors
    that AccumulateGrad takes without a copy. Together this keeps the regularizer at a few percent
    of a ResNet-50 training step (it was 13 % with autograd through dense C x C projectors).

    The kept residuals' tensors go through ``save_for_backward``; their tags (full or fold, axis
    order) stay on ctx as plain values.
    """

    @staticmethod
    def forward(ctx, specs, *weights):  # noqa: D102
        kept, n_rs, n_ws = [], [], []
        for w, (full, inner) in zip(weights, specs):
            n_ws.append(torch.linalg.vector_norm(w).clamp_min(torch.finfo(w.dtype).tiny))
            kept.append(_residual(w, full, inner))
            n_rs.append(_residual_norm(kept[-1], w, full, inner))
        ctx.specs = specs
        ctx.tags = [None if k is None else (type(k), tuple(k[1:])) for k in kept]
        ctx.save_for_backward(*weights, *(None if k is None else k[0] for k in kept), *n_rs, *n_ws)
        return torch.stack([n_r / n_w for n_r, n_w in zip(n_rs, n_ws)])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        saved = ctx.saved_tensors
        count = len(ctx.specs)
        weights, tensors, n_rs, n_ws = (saved[i * count:(i + 1) * count] for i in range(4))
        grads = []
        for i, (w, (full, inner), tag, t, n_r, n_w) in enumerate(
                zip(weights, ctx.specs, ctx.tags, tensors, n_rs, n_ws)):
            g = grad[i]
            coef_w = g * (n_r / n_w) / n_w / n_w  # sequential divisions: n_w^2 may underflow
            if tag is None:
                grads.append(torch.mul(w, -coef_w))
                continue
            kept = tag[0](t, *tag[1])
            coef_r = torch.where(n_r > 0, g / n_r.clamp_min(torch.finfo(w.dtype).tiny) / n_w, torch.zeros_like(g))
            if isinstance(kept, _Full):
                out = torch.mul(kept.r, coef_r)
            else:  # out = coef_r * E z, written in the axis order z was computed in
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


def _no_autocast(ref: torch.Tensor | None):
    """A context that disables autocast on `ref`'s device (no-op where autocast does not apply):
    the residual runs in the weights' own dtype, since a bf16 matmul would leave a ~1e-3 floor
    under a residual the regularizer drives to ~1e-5."""
    device_type = ref.device.type if ref is not None else "cpu"
    if device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def layer_residuals(weights: Sequence[torch.Tensor], inner_shapes: Sequence[Sequence[int]]) -> torch.Tensor:
    """(L,) relative residuals ||(I - A A^+) W|| / ||W|| of L kernels (each (O, C, N, N) or
    (O, F)), differentiable with the fused backward of `_Residuals`, in the weights' own dtype
    even inside an autocast region."""
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
    inner = tuple(inner_shape)
    full = tuple(weight.shape[-len(inner):])
    dims = tuple(range(batch_dims, weight.dim())) if batch_dims else None
    with torch.no_grad(), _no_autocast(weight):
        num = _residual_norm(_residual(weight, full, inner), weight, full, inner, dims)
        den = torch.linalg.vector_norm(weight, dim=dims)
    return num / den.clamp_min(torch.finfo(weight.dtype).tiny)
