"""Structured convolutions (Bhalgat et al., NeurIPS 2020): the pure-PyTorch core.

Train-form layers (:class:`StructuredConv2d`, :class:`StructuredLinear`), the structural
regularizer (:func:`structural_loss`), projection (:func:`project`), exact decomposition into
sum-pooling + small conv (:func:`decompose`), declarative conversion of any model
(:func:`structurize`) and analytic counting (:func:`complexity`). No Lightning, Hydra or wandb.

Only the method, its exact forms and the default choice among them live here: which exact
sum-pool form runs where is the installed :class:`SumPoolPolicy`, by default the CPU-fast exact
forms (:data:`CPU_SUM_POOL_POLICY`); :data:`REFERENCE_SUM_POOL_POLICY` (the general forms) is
installed only by an explicit :func:`set_sum_pool_policy` / :func:`sum_pool_policy`, and no import
changes the policy. Timing-based per-model deploy plans live in src/deploy/ (explicit calls); the
core never imports it.
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
    CPU_SUM_POOL_POLICY,
    REFERENCE_SUM_POOL_POLICY,
    CpuSumPoolPolicy,
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
    "SumPoolPolicy", "CpuSumPoolPolicy", "CPU_SUM_POOL_POLICY", "REFERENCE_SUM_POOL_POLICY",
    "get_sum_pool_policy", "set_sum_pool_policy", "sum_pool_policy",
    "structural_loss", "structural_residuals", "structured_layers", "project", "decompose",
    "structurize", "plan_structure", "parse_rules", "load_rules", "Rule", "StructurizeReport",
    "complexity", "Complexity", "LayerCost",
    "box_matrix", "compose", "coefficients", "project_weight", "relative_residual",
]
