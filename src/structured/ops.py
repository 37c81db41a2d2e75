"""Model-level operations: structural loss, residuals, projection and decomposition."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from .basis import layer_residuals
from .layers import DecomposedConv2d, DecomposedLinear, StructuredConv2d, StructuredLayer

__all__ = [
    "structured_layers",
    "structural_loss",
    "structural_residuals",
    "project",
    "decompose",
    "DEPLOY_FORMS",
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


# Deploy forms of a structured layer (see decompose's `recompose`).
DEPLOY_FORMS = ("decomposed", "spatial", "dense")


def _decompose_layer(name: str, layer: StructuredLayer, tol: float, reinit: bool, form: str) -> nn.Module:
    residual = float(layer.structural_residual().detach())
    if residual > tol:
        warnings.warn(
            f"decompose: layer '{name or layer.__class__.__name__}' is not structured (relative "
            f"residual {residual:.3e} > {tol:.0e}); decomposing its projection",
            stacklevel=3,
        )
    if form == "dense":
        return layer.to_dense()
    if form == "spatial":
        return layer.to_decomposed(spatial_only=True)
    dec = layer.to_decomposed()
    if reinit:
        # The composed kernel gets the variance the layer's own (dense) init gave it, so the
        # direct route starts like the model's standard initialisation (e.g. Kaiming fan-out).
        dec.reset_parameters(dense_std=float(layer.weight.detach().std()))
    return dec


def decompose(module: nn.Module, *, tol: float = DECOMPOSE_TOLERANCE, reinit: bool = False,
              recompose: Iterable[str] | Mapping[str, str] = ()) -> nn.Module:
    """The deploy form of `module` (a single structured layer or a whole model).

    Every structured layer is replaced by sum-pooling followed by the small conv / linear holding
    alpha = A^+ W (same bias). The input is not modified. A layer whose relative residual exceeds
    `tol` triggers a warning naming it; its projection is what gets decomposed (A^+ W = A^+ P W).
    `reinit=True` re-initialises every alpha for the direct-training route, matching the variance
    of each layer's current (initial) dense kernel.

    Deploy option `recompose`: structured layers (names as :func:`structured_layers` gives them;
    '' for a single layer) to deploy in another exact form. Names alone mean "dense": a plain
    ``nn.Conv2d`` / ``nn.Linear`` (no longer a structured layer) holding the projected kernel
    A alpha = A A^+ W and the same bias, i.e. one dense conv (dense parameter count and MACs, no
    sum-pool pass; `complexity` counts it as such). A mapping name -> form also allows "spatial"
    (convs only): sum-pool over space only, then an n x n conv over all input channels holding
    B(C, c) alpha, which keeps the spatial saving and skips the channel-window pass. The output
    is the same up to rounding; which form is fastest depends on the layer, input and hardware,
    and ``src.deploy.plan_recompose`` measures it (the deployment layer, src/deploy/tuning.py).
    """
    forms = dict(recompose) if isinstance(recompose, Mapping) else dict.fromkeys(recompose, "dense")
    bad = {n: f for n, f in forms.items() if f not in DEPLOY_FORMS}
    if bad:
        raise ValueError(f"decompose: unknown deploy form(s) {bad}; choose from {DEPLOY_FORMS}")
    if reinit and any(f != "decomposed" for f in forms.values()):
        raise ValueError("decompose: reinit (direct-training route) and recompose (deploy plan) exclude each other")
    if isinstance(module, StructuredLayer):
        _check_names(forms, {"": module})
        return _decompose_layer("", module, tol, reinit, forms.get("", "decomposed"))
    model = copy.deepcopy(module)
    replacements = [(name, layer) for name, layer in structured_layers(model)]
    _check_names(forms, dict(replacements))
    for name, layer in replacements:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _decompose_layer(name, layer, tol, reinit, forms.get(name, "decomposed")))
    return model


def _check_names(forms: Mapping[str, str], known: Mapping[str, StructuredLayer]) -> None:
    unknown = set(forms) - set(known)
    if unknown:
        raise ValueError(f"decompose: recompose names no structured layer: {sorted(unknown)}")
    for name, form in forms.items():
        if form == "spatial" and not isinstance(known[name], StructuredConv2d):
            raise ValueError(f"decompose: layer '{name}' ({type(known[name]).__name__}) has no spatial axes; "
                             f"deploy form 'spatial' applies to convs only")


def is_decomposed_layer(m: nn.Module) -> bool:
    return isinstance(m, (DecomposedConv2d, DecomposedLinear))
