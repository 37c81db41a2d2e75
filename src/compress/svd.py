"""Truncated-SVD factorizations of a conv (Jaderberg et al., 2014; Kuzmin et al., 2019), on
``torch.linalg.svd`` (computed in float64, stored in the conv's dtype):

- ``weight``: W (O x C x kh x kw) as the O x (C kh kw) matrix U S V^T; a kh x kw conv to r
  channels holding sqrt(S) V^T (the conv's stride, padding, dilation; no bias), then a 1 x 1 conv
  to O holding U sqrt(S) (the conv's bias). Full rank: min(O, C kh kw).
- ``spatial``: W rearranged as the (C kh) x (O kw) matrix M[(c, h), (o, w)] = W[o, c, h, w]; a
  kh x 1 conv to r channels (vertical stride, padding, dilation) holding U sqrt(S), then a 1 x kw
  conv to O (horizontal stride, padding, dilation; the bias) holding sqrt(S) V^T. Full rank:
  min(C kh, O kw).

Both are exact at full rank (zero padding commutes with the split: the intermediate map of a
zero input column is zero). The rank knob of :func:`compress_svd` is solved by src/compress/_solve.py.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ._common import TOLERANCE, scope_convs
from ._solve import Unit, one_thread, solve

__all__ = ["KINDS", "full_rank", "rank_cost", "svd_split", "apply_ranks", "compress_svd"]

KINDS = ("weight", "spatial")


def _svd(m: torch.Tensor):
    """Thin SVD (on CPU in one thread: these matrices have at most a few hundred rows)."""
    if m.device.type != "cpu":
        return torch.linalg.svd(m, full_matrices=False)
    with one_thread():
        return torch.linalg.svd(m, full_matrices=False)


def _check(conv: nn.Conv2d, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"svd kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str):
        raise ValueError(f"svd: {conv} is not a zero-padded, ungrouped Conv2d with numeric padding")


def full_rank(conv: nn.Conv2d, kind: str) -> int:
    _check(conv, kind)
    o, c, kh, kw = conv.weight.shape
    return min(o, c * kh * kw) if kind == "weight" else min(c * kh, o * kw)


def rank_cost(conv: nn.Conv2d, kind: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Mults per image of one rank of the factorized conv (its cost is linear in the rank), as
    src.structured.complexity counts the two convs."""
    o, c, kh, kw = conv.weight.shape
    w_in = in_shape[2]
    _, ho, wo = out_shape
    if kind == "weight":
        return ho * wo * c * kh * kw + o * ho * wo
    return ho * w_in * c * kh + o * ho * wo * kw  # the k x 1 conv keeps the input's width


@torch.no_grad()
def svd_split(conv: nn.Conv2d, kind: str, rank: int) -> nn.Sequential:
    """The two-conv factorization of `conv` at `rank` (see the module docstring)."""
    _check(conv, kind)
    r_max = full_rank(conv, kind)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= r_max:
        raise ValueError(f"svd ({kind}): rank={rank!r} must be an int in 1..{r_max} for {conv}")
    w = conv.weight.detach()
    o, c, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    kw_args = dict(device=w.device, dtype=w.dtype)
    if kind == "weight":
        u, s, vh = _svd(w.double().reshape(o, c * kh * kw))
        root = s[:rank].sqrt()
        first_w = (root[:, None] * vh[:rank]).reshape(rank, c, kh, kw)
        second_w = (u[:, :rank] * root).reshape(o, rank, 1, 1)
        first = nn.Conv2d(c, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False, **kw_args)
        second = nn.Conv2d(rank, o, 1, bias=conv.bias is not None, **kw_args)
    else:
        m = w.double().permute(1, 2, 0, 3).reshape(c * kh, o * kw)
        u, s, vh = _svd(m)
        root = s[:rank].sqrt()
        first_w = (u[:, :rank] * root).T.reshape(rank, c, kh, 1)
        second_w = (root[:, None] * vh[:rank]).reshape(rank, o, kw).permute(1, 0, 2).unsqueeze(2)
        first = nn.Conv2d(c, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False, **kw_args)
        second = nn.Conv2d(rank, o, (1, kw), (1, sw), (0, pw), (1, dw), bias=conv.bias is not None, **kw_args)
    first.weight.copy_(first_w.to(w.dtype))
    second.weight.copy_(second_w.to(w.dtype))
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    out = nn.Sequential(first, second)
    out.train(conv.training)
    return out


def apply_ranks(model: nn.Module, kind: str, ranks: Mapping[str, int | None]) -> nn.Module:
    """Replace, in place, each named conv by its factorization at the given rank (None: keep it)."""
    for name, rank in ranks.items():
        if rank is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, svd_split(model.get_submodule(name), kind, rank))
    return model


def compress_svd(model: nn.Module, kind: str, ratio: float, input_size: Sequence[int], reference: int):
    """`model` (a copy, changed in place) with its in-scope convs factorized at the solved ranks;
    (model, info) for src.compress.compress."""
    units = []
    for name, conv, shape_in, shape_out in scope_convs(model, input_size):
        _, ho, wo = shape_out
        dense = conv.out_channels * ho * wo * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        unit = rank_cost(conv, kind, shape_in, shape_out)
        ranks = [r for r in range(1, full_rank(conv, kind) + 1) if r * unit < dense]
        units.append(Unit(name, [r * unit for r in ranks] + [dense], ranks + [None]))
    sol = solve(units, reference, ratio, f"svd_{kind}", TOLERANCE)
    chosen = {u.name: sol.option(u) for u in units}
    apply_ranks(model, kind, chosen)
    return model, sol.info({n: ("dense" if r is None else {"rank": r}) for n, r in chosen.items()})
