"""Benchmark setup: allocator settings, machine labels, and the interleaved timer (defined in
src/structured/timing.py, which plan_recompose also uses)."""

from __future__ import annotations

import platform

import torch

from src.structured.timing import time_interleaved  # noqa: F401  (re-exported for the benchmarks)


def configure_allocator(mode: str) -> str:
    """'tuned': keep freed memory in the process (glibc mallopt M_MMAP_THRESHOLD = 32 MiB,
    M_TRIM_THRESHOLD = 1 GiB). glibc's default hands large freed blocks back to the OS, so every
    large tensor allocation page-faults again; on this CPU that alone slowed small convs and
    memory-bound sums by up to 3x, hiding the compute being measured. jemalloc / tcmalloc (the
    allocators PyTorch's CPU tuning guides recommend) behave like 'tuned'. 'default': leave it."""
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
    import os

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
