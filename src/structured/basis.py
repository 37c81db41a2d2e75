"""The linear algebra of structured kernels (METHOD.md section 1), axis by axis.

A structured kernel of shape (C, N, N) with inner sizes (c, n) is vec(W) = A vec(alpha) with
A = B(C, c) (x) B(N, n) (x) B(N, n). Every operator here (compose, coefficients, projection)
is applied one axis at a time with the small per-axis matrices, so the (C N^2)^2 projector is
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


_DEVICE_CACHE: dict[tuple[int, int, torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}


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


def _apply_axes(x: torch.Tensor, mats: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Multiply axis k+1 of x (axis 0 is the output channel) by mats[k]: x_k <- M x_k.

    A None matrix is the identity and costs nothing (e.g. the channel axis when c == C).
    """
    for axis, m in enumerate(mats, start=1):
        if m is None:
            continue
        x = torch.movedim(torch.tensordot(x, m, dims=([axis], [1])), -1, axis)
    return x


def _mats(shape: Sequence[int], inner: Sequence[int], which: int, ref: torch.Tensor):
    """Per-axis operator `which` (0: B, 1: B^+, 2: B B^+); None where the axis is not reduced."""
    return [
        None if length == l else axis_operators(length, l, ref.device, ref.dtype)[which]
        for length, l in zip(shape, inner)
    ]


def compose(alpha: torch.Tensor, full_shape: Sequence[int]) -> torch.Tensor:
    """W = A alpha: alpha (O, c, n, n) -> W (O, C, N, N) (or (O, c) -> (O, C) for Linear)."""
    return _apply_axes(alpha, _mats(full_shape, alpha.shape[1:], 0, alpha))


def coefficients(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """alpha = A^+ W, per output filter: W (O, C, N, N) -> alpha (O, c, n, n)."""
    return _apply_axes(weight, _mats(weight.shape[1:], inner_shape, 1, weight))


def project_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """P W = A A^+ W: the closest structured kernel (orthogonal projection), differentiable."""
    return _apply_axes(weight, _mats(weight.shape[1:], inner_shape, 2, weight))


def residual_weight(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """(I - A A^+) W."""
    return weight - project_weight(weight, inner_shape)


def relative_residual(weight: torch.Tensor, inner_shape: Sequence[int]) -> torch.Tensor:
    """||(I - A A^+) W||_F / ||W||_F, a differentiable scalar in [0, 1] (0 for W == 0)."""
    num = torch.linalg.vector_norm(residual_weight(weight, inner_shape))
    den = torch.linalg.vector_norm(weight)
    return num / den.clamp_min(torch.finfo(weight.dtype).tiny)
