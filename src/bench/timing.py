"""Benchmark setup: the process settings a measurement runs under, machine labels, and the
interleaved timer (defined in src/deploy/tuning.py, which plan_recompose also uses).

Every setting a benchmark changes is changed for the duration of a ``with`` block and restored
after it: :func:`torch_threads` (intra-op threads), :func:`inductor_freezing`
(``torch._inductor.config.freezing``), :func:`seeded` (the global RNG). Two settings are
process-wide and are not undone, by nature:

- :func:`configure_allocator` ("tuned"): glibc's ``mallopt`` has no getter, and setting
  ``M_MMAP_THRESHOLD`` switches off glibc's dynamic threshold for good, so the previous state
  cannot be restored. The benchmark command lines call it once, first; it is idempotent. The
  default is "default": glibc as a user's process has it.
- ``THP_MEM_ALLOC_ENABLE`` (transparent huge pages for PyTorch's CPU allocator): read once by c10
  when torch starts, so it is set before torch is imported, by ``python -m src.bench`` /
  ``python -m src.bench.core`` with ``--malloc tuned`` only (never on import of these modules).

:data:`ALLOCATORS` describes each allocator setup the model benchmark can measure, with how a
user gets it; the extra ones run in child processes (src/bench/models.py).
"""

from __future__ import annotations

import ctypes.util
import glob
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from src.deploy import time_interleaved  # noqa: F401  (re-exported for the benchmarks)
from src.deploy.runtimes import inductor_freezing, machine_label  # noqa: F401  (re-exported)

__all__ = ["time_interleaved", "configure_allocator", "huge_pages_label", "machine_label", "torch_threads",
           "inductor_freezing", "seeded", "AllocatorSetup", "ALLOCATORS", "find_library"]


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


# ------------------------------------------------------------------------------ allocator setups
_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


@dataclass(frozen=True)
class AllocatorSetup:
    """One allocator setup of a benchmark process: `malloc` (configure_allocator's mode, in
    process), the environment it starts with (`env`; `preload`: library names, the first found
    goes to LD_PRELOAD), its report `label` and how a user gets it (`how`)."""

    name: str
    label: str
    how: str
    malloc: str = "default"
    env: dict[str, str] = field(default_factory=dict)
    preload: tuple[str, ...] = ()

    def environment(self) -> dict[str, str] | None:
        """The variables to add to a child process's environment; None when a library to
        preload is not on this machine."""
        env = dict(self.env)
        if self.preload:
            path = next((p for p in map(find_library, self.preload) if p), None)
            if path is None:
                return None
            env["LD_PRELOAD"] = path
        return env


def find_library(name: str) -> str | None:
    """The path of a shared library file such as 'libjemalloc.so.2' in the usual library folders
    (or the dynamic loader's cache), else None."""
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                   "/usr/local/lib", "/opt/conda/lib"):
        hits = sorted(glob.glob(os.path.join(folder, name)))
        if hits:
            return hits[0]
    found = ctypes.util.find_library(name.removeprefix("lib").split(".so")[0])
    return found if found and found.startswith(name.split(".so")[0]) else None


ALLOCATORS: dict[str, AllocatorSetup] = {s.name: s for s in (
    AllocatorSetup("default", "glibc malloc, default settings",
                   "what every process has unless it changes something (no setup)"),
    AllocatorSetup("tuned", "glibc malloc tuned in process (mallopt: mmap threshold 32 MiB, trim threshold 1 GiB) "
                   "and THP_MEM_ALLOC_ENABLE=1",
                   "call `src.bench.timing.configure_allocator(\"tuned\")` (two ctypes `mallopt` calls) first "
                   "thing in the process, and start it with THP_MEM_ALLOC_ENABLE=1", malloc="tuned",
                   env={"THP_MEM_ALLOC_ENABLE": "1"}),
    AllocatorSetup("glibc_tunables", "glibc malloc tuned by environment (GLIBC_TUNABLES: the same thresholds)",
                   f"start the process with GLIBC_TUNABLES={_TUNABLES} (no code change)",
                   env={"GLIBC_TUNABLES": _TUNABLES}),
    AllocatorSetup("jemalloc", "jemalloc, preloaded", "install jemalloc (Debian/Ubuntu: apt install libjemalloc2) "
                   "and start the process with LD_PRELOAD=<path of libjemalloc.so.2>",
                   preload=("libjemalloc.so.2", "libjemalloc.so")),
    AllocatorSetup("tcmalloc", "tcmalloc, preloaded", "install gperftools' tcmalloc (Debian/Ubuntu: apt install "
                   "libtcmalloc-minimal4) and start the process with LD_PRELOAD=<path of libtcmalloc_minimal.so.4>",
                   preload=("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so",
                            "libtcmalloc.so")),
)}
