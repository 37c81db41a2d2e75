"""The linear algebra of structured kernels (METHOD.md section 1), axis by axis.

A structured kernel of shape (C, N, N) with inner sizes (c, n) is vec(W) = A vec(alpha) with
A = B(C, c) (x) B(N, n) (x) B(N, n). Every operator here (compose, coefficients, projection)
is applied through this Kronecker structure: one small matmul for the channel axis (C x C at
most) and one for the two spatial axes (their N^2 x N^2 product), so the (C N^2)^2 projector is
never built. The per-axis matrices are computed once in float64 and cached per (device, dtype).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

__all__ = [
    "box_matrix",
    "axis_operators",
    "compose",
    "coefficients",
    "project_weight",
    "residual_weight",
    "relative_residual",
]


def box_matrix(length: int, inner: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """B(L, l): the L x l matrix whose column j has ones in rows j .. j + L - l."""
    if not 1 <= inner <= length:
        raise ValueError(f"box_matrix needs 1 <= inner <= length, got length={length}, inner={inner}")
    rows = torch.arange(length).unsqueeze(1)
    cols = torch.arange(inner).unsqueeze(0)
    return ((rows >= cols) & (rows <= cols + length - inner)).to(dtype)


@functools.lru_cache(maxsize=None)
def _axis_operators_f64(length: int, inner: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = box_matrix(length, inner)
    b_pinv = torch.linalg.pinv(b)  # (inner, length); B has full column rank
    return b, b_pinv, b @ b_pinv


_DEVICE_CACHE: dict[tuple, object] = {}


def axis_operators(
    length: int, inner: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, B^+, B B^+) for one axis, cached per (length, inner, device, dtype)."""
    key = (length, inner, torch.device(device), dtype)
    ops = _DEVICE_CACHE.get(key)
    if ops is None:
        ops = tuple(t.to(device=device, dtype=dtype) for t in _axis_operators_f64(length, inner))
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
        mats = [axis_operators(length, l, ref.device, torch.float64)[which] if length != l else None
                for length, l in zip(full, inner)]
        if len(mats) == 2:
            mh, mw = (torch.eye(length, dtype=torch.float64, device=ref.device) if m is None else m
                      for m, length in zip(mats, full))
            op = torch.kron(mh, mw)
        else:
            op = mats[0]
        op = op.to(ref.dtype)
        _DEVICE_CACHE[key] = op
    return op


def _apply(x: torch.Tensor, full: Sequence[int], inner: Sequence[int], which: int) -> torch.Tensor:
    """Apply operator `which` to the trailing structure axes of x: (..., C, N, N) or (..., F).

    Leading axes (output units, stacked layers) are folded into the rows of two plain matmuls:
    one over the flattened spatial axes, one over the channel axis. (Broadcasting a small matrix
    over many tiny batched products instead was measured 2x slower on CPU.)
    """
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


def relative_residual(weight: torch.Tensor, inner_shape: Sequence[int], batch_dims: int = 0) -> torch.Tensor:
    """||(I - A A^+) W||_F / ||W||_F, differentiable, in [0, 1] (0 for W == 0).

    With batch_dims=1, `weight` stacks several layers' kernels (G, O, ...) and the result is
    the (G,) vector of their residuals (one set of matmuls for the whole group).
    """
    dims = tuple(range(batch_dims, weight.dim()))
    num = torch.linalg.vector_norm(residual_weight(weight, inner_shape), dim=dims)
    den = torch.linalg.vector_norm(weight, dim=dims)
    return num / den.clamp_min(torch.finfo(weight.dtype).tiny)
