"""Filter pruning by L1 norm (Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient
ConvNets", ICLR 2017), on torch-pruning (Fang et al., "DepGraph: Towards Any Structural
Pruning", CVPR 2023).

As Li et al. do for ResNets, only the first conv of each residual block loses filters: the
filters with the smallest sum of absolute kernel weights go, and torch-pruning's dependency graph
removes what depends on them (the BatchNorm channels after the conv, the input channels of the
block's second conv). Block outputs and shortcuts keep their width. The knob, one fraction of
each block's mults (equivalently of its filters: a block's cost is linear in the filters kept), is
solved by src/compress/_solve.py.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from ._common import TOLERANCE, scope
from ._solve import Unit, conv_shapes, one_thread, solve

__all__ = ["l1_order", "prune_filters", "compress_prune_l1"]


def l1_order(conv: nn.Conv2d) -> torch.Tensor:
    """Filter indices of `conv` from the smallest L1 norm up (ties: lower index first)."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.argsort(norms, stable=True)


def prune_filters(model: nn.Module, keep: dict[str, int], input_size: Sequence[int]) -> nn.Module:
    """Keep the `keep[name]` filters of largest L1 norm of each named block's conv1, in place,
    with torch-pruning's DependencyGraph (which follows the cut into bn1 and conv2)."""
    import torch_pruning as tp

    todo = {name: k for name, k in keep.items() if k < model.get_submodule(name).conv1.out_channels}
    if not todo:
        return model
    p = next(model.parameters())
    was_training = model.training
    model.eval()  # the tracing forward pass must not update BatchNorm statistics
    try:
        with one_thread() if p.device.type == "cpu" else contextlib.nullcontext():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=torch.zeros((1, *input_size), device=p.device, dtype=p.dtype), verbose=False)
        for name, k in todo.items():
            block = model.get_submodule(name)
            width, out_width = block.conv1.out_channels, block.conv2.out_channels
            drop = sorted(l1_order(block.conv1)[: width - k].tolist())
            group = graph.get_pruning_group(block.conv1, tp.prune_conv_out_channels, idxs=drop)
            if not graph.check_pruning_group(group):
                raise RuntimeError(f"prune_l1: torch-pruning refuses to prune {len(drop)} filters of {name}.conv1")
            group.prune()
            if (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels,
                    block.conv2.out_channels) != (k, k, k, out_width):
                raise RuntimeError(f"prune_l1: pruning {name}.conv1 changed more than its filters, bn1 and "
                                   f"conv2's inputs: {block}")
    finally:
        model.train(was_training)
    return model


def compress_prune_l1(model: nn.Module, ratio: float, input_size: Sequence[int], reference: int):
    """`model` (a copy, changed in place) pruned to the solved widths; (model, info) for
    src.compress.compress."""
    blocks = [name for name, _ in scope(model)]
    shapes = conv_shapes(model, input_size, [f"{b}.{c}" for b in blocks for c in ("conv1", "conv2")])
    units = []
    for name in blocks:
        block = model.get_submodule(name)
        c1, c2 = block.conv1, block.conv2
        (_, h1, w1), (o2, h2, w2) = shapes[f"{name}.conv1"][1], shapes[f"{name}.conv2"][1]
        per_filter = h1 * w1 * c1.in_channels * c1.kernel_size[0] * c1.kernel_size[1] \
            + o2 * h2 * w2 * c2.kernel_size[0] * c2.kernel_size[1]  # its conv1 filter + conv2 input channel
        widths = list(range(1, c1.out_channels + 1))
        units.append(Unit(name, [k * per_filter for k in widths], widths))
    sol = solve(units, reference, ratio, "prune_l1", TOLERANCE)
    keep = {u.name: sol.option(u) for u in units}
    prune_filters(model, keep, input_size)
    return model, sol.info({f"{u.name}.conv1": {"filters": keep[u.name], "of": u.options[-1]} for u in units})
