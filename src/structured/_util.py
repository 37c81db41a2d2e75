"""Small helpers shared by the core's modules: one definition per idea."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

import torch

__all__ = ["pair", "as_tuple", "is_channels_last", "constant"]

T = TypeVar("T")


def pair(v: int | Iterable[int]) -> tuple[int, ...]:
    """An int or a sequence of per-axis values as a tuple: ``3 -> (3, 3)``, ``(1, 2) -> (1, 2)``
    (the convention of nn.Conv2d's kernel_size, stride, dilation)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def as_tuple(v, what: str = "value", where: str | None = None) -> tuple | None:
    """One value or a list of values as a tuple: ``None -> None``, ``'a' -> ('a',)``, ``3 -> (3,)``,
    ``[1, 2] -> (1, 2)``. Anything else raises ValueError naming `what` (and `where`, if given)."""
    if v is None:
        return None
    if isinstance(v, (str, int)):
        return (v,)
    if isinstance(v, Iterable):
        return tuple(v)
    prefix = f"{where}: " if where else ""
    raise ValueError(f"{prefix}'{what}' must be a value or a list, got {v!r}")


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor (activation or conv kernel) is laid out channels_last, and not also
    plain contiguous (a tensor with C == 1 or H == W == 1 is both; it counts as contiguous)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def constant(make: Callable[[], T]) -> T:
    """make() evaluated outside inference mode, for the module-level caches of constant tensors.

    A tensor created inside ``torch.inference_mode()`` is an inference tensor; cached, it would
    break every later autograd use ("Inference tensors cannot be saved for backward") once the
    first call happened under inference mode (e.g. an evaluation before the first training step)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return make()
    return make()
