"""Structured convolutions at a chosen mults budget: (c, n) per conv, solved, then structurize.

Each in-scope conv (C input channels, N x N kernel) gets the inner sizes (c, n) of its ladder
rung: the largest channel count at the smallest kernel that fits the budget, i.e. n = 1 with
c = 1..C, then n = 2 with c from C/4 up to C, ..., n = N with c up to C (the dense conv, left as
it is). Its decomposed cost, out_pixels x O x c n^2, increases strictly along the ladder. The A
and B rule sets of src/models/rules/cifar_resnet_{a,b}.yaml are the rungs (C, 2) and (0.75 C, 2).
The solved sizes become a rule set (one rule per distinct (c, n), with the layer names) passed to
:func:`src.structured.structurize`, which copies the dense weights into the structured layers.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ._common import TOLERANCE, scope_convs
from ._solve import Unit, solve

__all__ = ["ladder", "compress_structured"]


def ladder(in_channels: int, kernel_size: int) -> list[tuple[int, int]]:
    """The (c, n) rungs of a conv with C = `in_channels`, N = `kernel_size`, cheapest first."""
    rungs = []
    for n in range(1, kernel_size + 1):
        first = in_channels * (n - 1) ** 2 // n ** 2 + 1  # the first c whose c n^2 beats the previous kernel's C (n-1)^2
        rungs += [(c, n) for c in range(first, in_channels + 1)]
    return rungs


def compress_structured(model: nn.Module, ratio: float, input_size: Sequence[int], reference: int):
    """`model` (a copy, changed in place) with its in-scope convs structured at the solved (c, n);
    (model, info) for src.compress.compress."""
    from src.structured import structurize

    units = []
    for name, conv, _, (o, ho, wo) in scope_convs(model, input_size):
        rungs = ladder(conv.in_channels, conv.kernel_size[0])
        units.append(Unit(name, [o * ho * wo * c * n * n for c, n in rungs], rungs))
    sol = solve(units, reference, ratio, "structured", TOLERANCE)
    chosen = {u.name: sol.option(u) for u in units}
    groups: dict[tuple[int, int], list[str]] = {}
    for name, (c, n) in chosen.items():
        if (c, n) != (model.get_submodule(name).in_channels, model.get_submodule(name).kernel_size[0]):
            groups.setdefault((c, n), []).append(name)  # the top rung is the dense conv: left as it is
    rules = {"rules": [{"type": "conv", "name": names_, "c": c, "n": n}
                       for (c, n), names_ in sorted(groups.items(), key=lambda kv: (-kv[0][1], -kv[0][0]))],
             "exclude": []}
    if rules["rules"]:
        structurize(model, rules)
    return model, sol.info({n: {"c": c, "n": k} for n, (c, k) in chosen.items()}, rules=rules)
