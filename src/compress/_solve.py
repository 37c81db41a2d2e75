"""The shared knob solver of src/compress: one per-unit mults fraction, walked one unit at a time.

A unit (one conv, or one block for pruning) has a ladder of options with strictly increasing
mults, the last one the unit as it was. With knob f every unit would take the option whose
fraction of its own dense cost is nearest f; the rounding thresholds of all units, sorted (ties in
unit order), form a path on which every step moves one unit up one rung. The solver takes the
point of that path nearest the target (see src/compress/__init__.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["Unit", "Solution", "solve", "conv_shapes", "count_mults", "one_thread"]


@contextlib.contextmanager
def one_thread():
    """Run a tiny CPU workload (an SVD of a few hundred rows, a batch-1 trace) in one intra-op
    thread: more threads only contend, badly on a busy machine (measured on 2 busy cores: a
    batch-1 resnet56 forward 2.6 s with two threads, 0.04 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Unit:
    name: str
    costs: list[int]            # mults per image of each option, strictly increasing; the last: as it was
    options: list[Any] = field(default_factory=list)  # what each option is (rank, kept filters, (c, n))

    def __post_init__(self):
        if not self.costs or any(b <= a for a, b in zip(self.costs, self.costs[1:])):
            raise RuntimeError(f"unit {self.name}: option costs must increase strictly, got {self.costs}")


@dataclass
class Solution:
    choice: dict[str, int]      # unit name -> option index
    knob: float                 # the per-unit mults fraction f reached
    mults: int                  # mults per image of the whole model

    def option(self, unit: Unit) -> Any:
        return unit.options[self.choice[unit.name]]

    def info(self, layers: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """What a method returns to src.compress.compress besides the model: the knob, the
        mults, per unit what was chosen (`layers`), and `extra`."""
        return {"knob": {"name": "layer_mults_fraction", "value": self.knob}, "mults": self.mults,
                "layers": layers, **extra}


def solve(units: Sequence[Unit], reference: int, ratio: float, method: str, tolerance: float) -> Solution:
    """The point of the path nearest ``ratio * reference`` mults; ValueError if it is more than
    `tolerance` (relative) away."""
    fixed = reference - sum(u.costs[-1] for u in units)  # outside the scope (stem, classifier, ...)
    if fixed < 0:
        raise RuntimeError(f"compress({method}): in-scope cost exceeds the model's ({reference:,} mults)")
    events = []
    for i, u in enumerate(units):
        frac = [c / u.costs[-1] for c in u.costs]
        events += [((frac[j - 1] + frac[j]) / 2, i, j) for j in range(1, len(frac))]
    events.sort()
    total = fixed + sum(u.costs[0] for u in units)
    target = ratio * reference
    best_s, best_total, lowest = 0, total, total
    for s, (_, i, j) in enumerate(events, 1):
        total += units[i].costs[j] - units[i].costs[j - 1]
        if abs(total - target) < abs(best_total - target):
            best_s, best_total = s, total
    if abs(best_total / target - 1) > tolerance:
        raise ValueError(
            f"compress({method}): mults_ratio={ratio:g} is out of reach: {method} on this model reaches mults "
            f"ratios {lowest / reference:.4f} .. 1 (nearest {best_total / reference:.4f}; "
            f"the stem, classifier and shortcuts, {fixed / reference:.2%} of the mults, are never compressed); "
            f"allowed: within {tolerance:.0%} of a reachable ratio")
    choice = {u.name: 0 for u in units}
    for _, i, j in events[:best_s]:
        choice[units[i].name] = j
    knob = events[best_s - 1][0] if best_s else 0.0
    return Solution(choice, round(knob, 6), int(best_total))


@torch.no_grad()
def conv_shapes(model: nn.Module, input_size: Sequence[int], names: Sequence[str]):
    """{name: (input (C, H, W), output (O, Ho, Wo))} of the named modules for one zero input,
    from one batch-1 forward in eval mode (the model is left as it was)."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for name in names:
        def hook(m, args, out, name=name):
            shapes[name] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with one_thread():
            model(torch.zeros((1, *input_size), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"compress: {', '.join(missing)} did not run in a forward pass at input {tuple(input_size)}")
    return shapes


def count_mults(model: nn.Module, input_size: Sequence[int]) -> int:
    """src.structured.complexity's mults_decomposed, counted on a CPU copy in one thread (the
    same count as on the meta device, several times faster for these small models)."""
    from src.structured import complexity

    with one_thread():
        return complexity(model, input_size, device="cpu").mults_decomposed
