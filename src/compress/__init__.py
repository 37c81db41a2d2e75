"""Compression baselines for the CIFAR ResNets, one call each, at a matched multiplication budget.

    from src.compress import compress
    small = compress(model, "svd_spatial", mults_ratio=0.45, input_size=(3, 32, 32))
    small.compress_info   # {'method', 'target_mults_ratio', 'achieved_mults_ratio', 'knob', 'layers', ...}

``compress(model, method, mults_ratio, input_size)`` returns a new model (``model`` is left as it
is) whose multiplications per image, counted by :func:`src.structured.complexity`
(``mults_decomposed``: the decomposed form of structured layers, the plain count otherwise), are
within +-2 % of ``mults_ratio`` times ``model``'s. The result is an ordinary ``nn.Module`` that
trains; fine-tuning is the training pipeline's job: ``+model.compress.method=<method>
+model.compress.mults_ratio=<ratio>`` (src/pipeline.py ``build_model``, after ``model.init_from``;
conf/exp/cifar10/compress/<method>_<a|b>.yaml set both at the A / B budgets).

Scope (the same for every method, so the comparison is fair): the 3x3 convolutions of the residual
blocks (``BasicBlock.conv1`` and ``conv2`` of src/models/cifar_resnet.py: resnet20/32/44/56/110).
The stem conv, the classifier and option-B 1x1 shortcut convs stay as they are; their cost is the
floor of every method's reachable range.

Methods (:data:`METHODS`):

- ``structured``: every in-scope conv becomes a :class:`~src.structured.StructuredConv2d` with
  inner sizes (c, n) (src/compress/structured.py); the dense weights are copied in, so the model
  fine-tunes with the structural loss and is then projected and decomposed by the pipeline. Mults
  are those of the decomposed form (sum-pool + c x n x n conv). The A / B rule sets
  (src/models/rules/cifar_resnet_{a,b}.yaml: n = 2 with c = C, and c = 0.75 C) are two points of
  this family.
- ``prune_l1``: filter pruning by L1 norm (Li et al., ICLR 2017): the filters of the first conv of
  every block with the smallest sum of absolute weights are removed, with the matching BatchNorm
  channels and input channels of the block's second conv; shortcuts and block outputs are
  untouched. The surgery is torch-pruning's (Fang et al., CVPR 2023, DepGraph:
  ``DependencyGraph.get_pruning_group``), src/compress/prune.py.
- ``svd_weight``: each conv W (O x C x k x k) is replaced by a k x k conv to r channels and a
  1 x 1 conv back to O, from the truncated SVD of W reshaped O x (C k k) (Jaderberg et al., 2014;
  Kuzmin et al., 2019, "Taxonomy and evaluation of structured compression of convolutional neural
  networks");
- ``svd_spatial``: each conv is replaced by a k x 1 conv to r channels and a 1 x k conv back to O,
  from the truncated SVD of W rearranged (C k) x (O k) (Jaderberg et al., 2014, scheme 2; AIMET's
  "spatial SVD"). Both SVD forms are in src/compress/svd.py, on ``torch.linalg.svd``; at full rank
  they reproduce each conv exactly (tests/test_compress.py checks it in float64).

One knob per method, solved to meet the ratio. Every in-scope unit (a conv; for ``prune_l1`` a
block, whose two convs both shrink with the pruned channels) has a ladder of options of
increasing cost, from the smallest (rank 1; one filter kept; c = n = 1) to the unit left as it
was: ranks r = 1, 2, ... while the factorization costs less than the dense conv, then the dense
conv (so ratio 1 is the model itself); kept filters 1 .. O; for ``structured``, the largest
channel count at the smallest kernel that fits, (c, n) with n = 1, c = 1..C, then n = 2,
c = C/4 .. C, then n = 3 (the paper's preference for spatial structure: A is n = 2, c = C).
The knob is one per-unit mults fraction f in (0, 1]: every unit takes the option nearest to
fraction f of its own dense cost. Because units of one stage share a shape and would all step
together, the solver walks f's rounding thresholds one unit at a time (ties in layer order), so
units differ by at most one step of their ladder; it takes the point nearest the target and
refuses (ValueError) when that is more than 2 % off, naming the reachable range.
``model.compress_info`` records what was done: method, target and achieved ratio, the mults of
both models, the knob value f, and per unit the rank / kept filters / (c, n) (and, for
``structured``, the rule set passed to :func:`src.structured.structurize`).

AIMET (Qualcomm's AI Model Efficiency Toolkit) implements spatial and weight SVD and channel
pruning. Checked here: ``pip install aimet-torch`` (2.42.0) resolves against torch 2.14 and pulls
34 more packages (scipy, scikit-learn, cvxpy, bokeh, panel, holoviews, tensorboard, ...);
``aimet_torch.compress.ModelCompressor`` in manual mode ran spatial and weight SVD on resnet20
(MAC ratios 0.505 / 0.487 for per-layer ratio 0.5). It is not a dependency: its splitters work in
float32 numpy (no float64 exactness check), its weight SVD factorizes the input side (1 x 1 to r,
then k x k) rather than the k x k then 1 x 1 form used here, and its knob is a per-layer ratio,
which does not meet a model-level mults target within 2 %. tests/test_compress.py cross-checks
the spatial split against AIMET's where ``aimet_torch`` is importable (skipped otherwise).
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from ._common import METHODS, TOLERANCE, check_method, check_ratio, scope

__all__ = ["METHODS", "TOLERANCE", "compress", "check_method", "check_ratio", "scope"]


def compress(model: nn.Module, method: str, mults_ratio: float, input_size: Sequence[int]) -> nn.Module:
    """A new model with `method` applied to the 3x3 convs of the residual blocks, its
    multiplications per image within 2 % of `mults_ratio` x `model`'s (see the module docstring).
    ``result.compress_info`` records what was done. ValueError for an unknown method, a ratio
    outside (0, 1], a model outside the scope, or a ratio the method cannot reach."""
    from ._solve import count_mults

    method = check_method(method)
    ratio = check_ratio(mults_ratio, method)
    input_size = tuple(int(s) for s in input_size)
    scope(model)
    reference = count_mults(model, input_size)
    if method == "structured":
        from .structured import compress_structured as run
    elif method == "prune_l1":
        from .prune import compress_prune_l1 as run
    else:
        from .svd import compress_svd

        def run(m, r, size, ref):
            return compress_svd(m, method.removeprefix("svd_"), r, size, ref)
    new, info = run(copy.deepcopy(model), ratio, input_size, reference)
    achieved = count_mults(new, input_size)
    if achieved != info["mults"]:
        raise RuntimeError(f"compress({method}): planned {info['mults']:,} mults but complexity() counts "
                           f"{achieved:,}: the cost model and the built model disagree")
    new.compress_info = {"method": method, "target_mults_ratio": ratio,
                         "achieved_mults_ratio": achieved / reference, "mults": achieved,
                         "mults_reference": reference, **{k: v for k, v in info.items() if k != "mults"}}
    return new
