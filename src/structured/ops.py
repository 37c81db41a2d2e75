"""Model-level operations: structural loss, residuals, projection and decomposition."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .basis import layer_residuals
from .layers import DecomposedConv2d, DecomposedLinear, StructuredLayer

__all__ = [
    "structured_layers",
    "structural_loss",
    "structural_residuals",
    "project",
    "decompose",
    "DECOMPOSE_TOLERANCE",
]

# Relative residual above which decompose() warns that a layer was not structured (it then
# decomposes the projection). Float32 projection leaves ~1e-7.
DECOMPOSE_TOLERANCE = 1e-5


def structured_layers(module: nn.Module) -> Iterator[tuple[str, StructuredLayer]]:
    """(name, layer) for every structured layer in `module`, itself included (name '')."""
    for name, m in module.named_modules():
        if isinstance(m, StructuredLayer):
            yield name, m


def structural_loss(module: nn.Module) -> torch.Tensor:
    """sum_l ||(I - A_l A_l^+) W_l||_F / ||W_l||_F over the structured layers (differentiable).

    One autograd node for all layers (`basis.layer_residuals`): O(C) channel folds instead of
    C x C projectors, one small matmul for the spatial axes, and a fused backward, which keeps
    the regularizer's cost a few percent of a training step (measured by `python -m src.bench
    --sections training`). Zero (a tensor) when the model has no structured layer, so it can
    always be added.
    """
    layers = [layer for _, layer in structured_layers(module)]
    if not layers:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    groups: dict[tuple, list[StructuredLayer]] = {}
    for layer in layers:  # one call per device/dtype
        groups.setdefault((layer.weight.device, layer.weight.dtype), []).append(layer)
    total = None
    for group in groups.values():
        part = layer_residuals([m.weight for m in group], [m.inner_shape for m in group]).sum()
        total = part if total is None else total + part.to(total.device)
    return total


@torch.no_grad()
def structural_residuals(module: nn.Module) -> dict[str, float]:
    """Per-layer relative residual, name -> float, for logging."""
    return {name: float(layer.structural_residual()) for name, layer in structured_layers(module)}


def project(module: nn.Module) -> nn.Module:
    """In place, W <- A A^+ W for every structured layer; returns `module`."""
    for _, layer in structured_layers(module):
        layer.project_()
    return module


def _decompose_layer(name: str, layer: StructuredLayer, tol: float, reinit: bool) -> nn.Module:
    residual = float(layer.structural_residual().detach())
    if residual > tol:
        warnings.warn(
            f"decompose: layer '{name or layer.__class__.__name__}' is not structured (relative "
            f"residual {residual:.3e} > {tol:.0e}); decomposing its projection",
            stacklevel=3,
        )
    dec = layer.to_decomposed()
    if reinit:
        # The composed kernel gets the variance the layer's own (dense) init gave it, so the
        # direct route starts like the model's standard initialisation (e.g. Kaiming fan-out).
        dec.reset_parameters(dense_std=float(layer.weight.detach().std()))
    return dec


def decompose(module: nn.Module, *, tol: float = DECOMPOSE_TOLERANCE, reinit: bool = False) -> nn.Module:
    """The deploy form of `module` (a single structured layer or a whole model).

    Every structured layer is replaced by sum-pooling followed by the small conv / linear holding
    alpha = A^+ W (same bias). The input is not modified. A layer whose relative residual exceeds
    `tol` triggers a warning naming it; its projection is what gets decomposed (A^+ W = A^+ P W).
    `reinit=True` re-initialises every alpha for the direct-training route, matching the variance
    of each layer's current (initial) dense kernel.

    The other exact deploy forms of a layer (a plain dense conv holding A A^+ W,
    :meth:`StructuredLayer.to_dense`; the "spatial" form, ``to_decomposed(spatial_only=True)``;
    fixed sum-pool forms) are chosen per layer by a deploy plan and applied with
    ``src.deploy.decompose_planned(module, plan)``, the one entry for plans (src/deploy/forms.py);
    ``src.deploy.plan_recompose`` measures a plan.
    """
    if isinstance(module, StructuredLayer):
        return _decompose_layer("", module, tol, reinit)
    model = copy.deepcopy(module)
    for name, layer in list(structured_layers(model)):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, _decompose_layer(name, layer, tol, reinit))
    return model


def is_decomposed_layer(m: nn.Module) -> bool:
    return isinstance(m, (DecomposedConv2d, DecomposedLinear))
