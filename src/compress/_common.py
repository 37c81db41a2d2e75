"""The names every compression method shares (the methods, the tolerance, the checks and the
scope), in a leaf module: src/compress/__init__.py (the entry point, :func:`src.compress.compress`)
and the methods (prune.py, svd.py, structured.py) import them from here, never from the package.
See the package docstring for what they mean."""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import nn

from ._solve import conv_shapes

__all__ = ["METHODS", "TOLERANCE", "check_method", "check_ratio", "scope", "scope_convs"]

METHODS = ("structured", "prune_l1", "svd_weight", "svd_spatial")
TOLERANCE = 0.02  # relative: |achieved / target - 1| <= 2 %

def check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"compress: method={method!r} is not a compression method; allowed: {', '.join(METHODS)}")
    return method


def check_ratio(mults_ratio: Any, method: str = "") -> float:
    ok = isinstance(mults_ratio, (int, float)) and not isinstance(mults_ratio, bool) and math.isfinite(mults_ratio)
    if not ok or not 0 < mults_ratio <= 1:
        raise ValueError(f"compress({method}): mults_ratio={mults_ratio!r} must be a number in (0, 1] "
                         f"(the compressed model's multiplications over the given model's)")
    return float(mults_ratio)


def scope(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) of every residual block whose 3x3 convs are compressed: the
    BasicBlocks of the CIFAR ResNets. ValueError when there are none or one is not a plain 3x3
    conv (e.g. an already structured model)."""
    from src.models.cifar_resnet import BasicBlock
    from src.structured import StructuredLayer

    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise ValueError(f"compress: {type(model).__name__} has no residual block (BasicBlock of "
                         f"src/models/cifar_resnet.py); compress() covers the CIFAR ResNets "
                         f"(resnet20, resnet32, resnet44, resnet56, resnet110)")
    for name, block in blocks:
        for conv_name in ("conv1", "conv2"):
            conv = getattr(block, conv_name)
            if type(conv) is not nn.Conv2d or isinstance(conv, StructuredLayer) or conv.kernel_size != (3, 3) \
                    or conv.groups != 1:
                raise ValueError(f"compress: {name}.{conv_name} is a {type(conv).__name__} "
                                 f"(kernel {getattr(conv, 'kernel_size', '?')}); compress() expects the dense "
                                 f"model's plain 3x3 convs (not an already structured or compressed model)")
    return blocks


def scope_convs(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, nn.Conv2d, tuple[int, ...], tuple[int, ...]]]:
    """(qualified name, conv, input (C, H, W), output (O, Ho, Wo)) of every in-scope 3x3 conv
    (conv1 and conv2 of each block of :func:`scope`), for one input of `input_size`."""
    names = [f"{b}.{c}" for b, _ in scope(model) for c in ("conv1", "conv2")]
    shapes = conv_shapes(model, input_size, names)
    return [(name, model.get_submodule(name), *shapes[name]) for name in names]
