"""Structured convolutions (Bhalgat et al., NeurIPS 2020): the pure-PyTorch core.

Train-form layers (:class:`StructuredConv2d`, :class:`StructuredLinear`), the structural
regularizer (:func:`structural_loss`), projection (:func:`project`), exact decomposition into
sum-pooling + small conv (:func:`decompose`), declarative conversion of any model
(:func:`structurize`) and analytic counting (:func:`complexity`). No Lightning, Hydra or wandb.

Only the method and its exact forms live here. Deployment tuning (which exact sum-pool form runs
fastest where, the per-layer deploy plan, the timer) lives in src/deploy/tuning.py; the core
never imports it, and consults it only through the hook :func:`set_sum_pool_policy`.
"""

from .basis import box_matrix, coefficients, compose, project_weight, relative_residual
from .complexity import Complexity, LayerCost, complexity
from .layers import (
    DecomposedConv2d,
    DecomposedLinear,
    StructuredConv2d,
    StructuredLayer,
    StructuredLinear,
)
from .ops import decompose, project, structural_loss, structural_residuals, structured_layers
from .structurize import Rule, StructurizeReport, load_rules, parse_rules, plan_structure, structurize
from .sumpool import (
    FeatureSumPool,
    SumPool,
    SumPoolPolicy,
    get_sum_pool_policy,
    set_sum_pool_policy,
    sum_pool2d,
    sum_pool_policy,
    window_sum,
)

__all__ = [
    "StructuredConv2d", "StructuredLinear", "StructuredLayer", "DecomposedConv2d", "DecomposedLinear",
    "SumPool", "FeatureSumPool", "sum_pool2d", "window_sum",
    "SumPoolPolicy", "get_sum_pool_policy", "set_sum_pool_policy", "sum_pool_policy",
    "structural_loss", "structural_residuals", "structured_layers", "project", "decompose",
    "structurize", "plan_structure", "parse_rules", "load_rules", "Rule", "StructurizeReport",
    "complexity", "Complexity", "LayerCost",
    "box_matrix", "compose", "coefficients", "project_weight", "relative_residual",
]
