"""Benchmark setup: the process settings a measurement runs under, machine labels, and the
interleaved timer (defined in src/deploy/tuning.py, which plan_recompose also uses).

Every setting a benchmark changes is changed for the duration of a ``with`` block and restored
after it: :func:`torch_threads` (intra-op threads), :func:`inductor_freezing`
(``torch._inductor.config.freezing``), :func:`seeded` (the global RNG). Two settings are
process-wide and are not undone, by nature:

- :func:`configure_allocator` ("tuned"): glibc's ``mallopt`` has no getter, and setting
  ``M_MMAP_THRESHOLD`` switches off glibc's dynamic threshold for good, so the previous state
  cannot be restored. The benchmark command lines call it once, first; it is idempotent.
- ``THP_MEM_ALLOC_ENABLE`` (transparent huge pages for PyTorch's CPU allocator): read once by c10
  when torch starts, so it is set before torch is imported, by ``python -m src.bench`` /
  ``python -m src.bench.core`` only (never on import of these modules).
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator

import torch

from src.deploy import time_interleaved  # noqa: F401  (re-exported for the benchmarks)

__all__ = ["time_interleaved", "configure_allocator", "huge_pages_label", "machine_label", "torch_threads",
           "inductor_freezing", "seeded"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block, the previous count after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def inductor_freezing(enabled: bool = True) -> Iterator[None]:
    """``torch._inductor.config.freezing`` (weights constant-folded into the compiled graph, as for
    CPU inference) inside the block, its previous value after it. Compilation happens lazily, at
    the first call, so the compiled model must also be first called inside the block."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=enabled):
        yield


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """torch's global CPU RNG seeded with `seed` inside the block, its previous state after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def configure_allocator(mode: str) -> str:
    """'tuned': keep freed memory in the process (glibc mallopt M_MMAP_THRESHOLD = 32 MiB,
    M_TRIM_THRESHOLD = 1 GiB). glibc's default hands large freed blocks back to the OS, so every
    large tensor allocation page-faults again; on this CPU that alone slowed small convs and
    memory-bound sums by up to 3x, hiding the compute being measured. jemalloc / tcmalloc (the
    allocators PyTorch's CPU tuning guides recommend) behave like 'tuned'. 'default': leave it.

    Process-wide and permanent (see the module's docstring): a tuned allocator stays tuned for
    the rest of the process. Returns the label the reports print."""
    if mode == "default":
        return "glibc malloc (default settings)"
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    ok = libc.mallopt(-3, 32 * 1024 * 1024) and libc.mallopt(-1, 1 << 30)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    if not ok:
        raise RuntimeError("mallopt failed: cannot tune the allocator on this libc (use --malloc default)")
    return "glibc malloc, tuned (mmap threshold 32 MiB, trim threshold 1 GiB)"


def huge_pages_label() -> str:
    """Whether PyTorch's CPU allocator asks for transparent huge pages (THP_MEM_ALLOC_ENABLE, read
    once by c10 when torch starts) and the kernel's THP mode."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        mode = "unknown"
    flag = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    asked = "requested" if flag not in ("", "0") else "not requested"
    return f"transparent huge pages {asked} (THP_MEM_ALLOC_ENABLE={flag or '0'}; kernel THP mode: {mode})"


def machine_label() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
