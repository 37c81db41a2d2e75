"""Inference backends of the model benchmark: one small unit each, one interface.

A backend has

- ``name``: what ``--backends`` and the report call it;
- ``plan_backend``: the runtime its deploy plan is measured on (``plan_recompose(...,
  backend=...)``: "eager", "compile" or "onnxruntime"), for its "+plan" rows; None: no plan rows
  (the CUDA backends); ``deploy_plan`` says whether it has one;
- ``channels_last``: whether it runs (and plans) in channels_last;
- ``session()``: a context manager holding the global settings the backend needs while a group
  of candidates is prepared and timed on it, restored when the block ends;
- ``prepare(model, x)``: a zero-argument callable running a private copy of `model` on `x`
  (called once already: compiled where the backend compiles), or :class:`Skip` with the reason
  when the backend cannot run here.

Backends: ``eager`` (NCHW) and ``eager_cl`` (channels_last), plain PyTorch under
``torch.no_grad``; ``compile``, ``torch.compile`` (inductor, freezing on), channels_last;
``onnxruntime``, the model exported by :func:`src.deploy.export.export_onnx` on ONNX Runtime's CPU
provider; ``cuda``, ``cuda_bf16`` (autocast) and ``cuda_compile``, channels_last on the GPU. The
CPU ones run as src/deploy/runtimes.py runs them, which the deploy plan also uses.
"""

from __future__ import annotations

import copy
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol, Sequence

import torch
from torch import nn

from src.deploy.runtimes import compile_session, ort_session_options

__all__ = ["Skip", "Backend", "Eager", "Compiled", "Cuda", "OnnxRuntime", "CPU_BACKENDS", "CUDA_BACKENDS",
           "make_backend", "default_backends"]

CL = torch.channels_last
CPU_BACKENDS = ("eager", "eager_cl", "compile", "onnxruntime")
CUDA_BACKENDS = ("cuda", "cuda_bf16", "cuda_compile")

Runner = Callable[[], object]


class Skip(Exception):
    """A backend that cannot run here; the message says why."""


class Backend(Protocol):
    name: str
    plan_backend: str | None
    channels_last: bool

    @property
    def deploy_plan(self) -> bool: ...

    def session(self) -> ContextManager[None]: ...

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Runner: ...


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _torch_runner(name: str, model: nn.Module, x: torch.Tensor, *, amp: Callable[[], ContextManager] = nullcontext,
                  sync: Callable[[], None] = lambda: None) -> Runner:
    """run(): the model's forward on x under no_grad (and `amp`), then `sync`; run once here."""

    def run():
        with torch.no_grad(), amp():
            out = model(x)
        sync()
        return out

    try:
        run()  # compiles where the backend compiles
    except Exception as e:  # noqa: BLE001 - any failure skips the backend
        raise Skip(f"{name} failed here: {_first_line(e)}")
    return run


class _Base:
    """What every backend shares: a deploy plan where it names a plan runtime, and no session
    state unless it says otherwise."""

    plan_backend: str | None

    @property
    def deploy_plan(self) -> bool:
        return self.plan_backend is not None

    def session(self) -> ContextManager[None]:
        return nullcontext()


@dataclass(frozen=True)
class Eager(_Base):
    """Plain PyTorch on the CPU, NCHW or channels_last."""

    name: str = "eager"
    channels_last: bool = False
    plan_backend: str | None = "eager"

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Runner:
        model = copy.deepcopy(model).eval()
        if self.channels_last:
            model, x = model.to(memory_format=CL), x.to(memory_format=CL)
        return _torch_runner(self.name, model, x)


@dataclass(frozen=True)
class Compiled(_Base):
    """torch.compile (inductor, freezing on: weights constant-folded, as for inference),
    channels_last, static shapes; on the CPU or the GPU."""

    name: str = "compile"
    device: str = "cpu"
    plan_backend: str | None = "compile"
    channels_last: bool = True

    @contextmanager
    def session(self) -> Iterator[None]:
        with compile_session():  # a fresh code cache per group (no recompile limits, no dynamic batch), freezing
            yield

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Runner:
        model = copy.deepcopy(model).eval().to(self.device, memory_format=CL)
        x = x.to(self.device, memory_format=CL)
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        return _torch_runner(self.name, torch.compile(model, dynamic=False), x, sync=sync)


@dataclass(frozen=True)
class Cuda(_Base):
    """Eager PyTorch on the GPU, channels_last; bf16: under bfloat16 autocast."""

    name: str = "cuda"
    bf16: bool = False
    plan_backend: str | None = None
    channels_last: bool = True

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Runner:
        model = copy.deepcopy(model).eval().to("cuda", memory_format=CL)
        x = x.to("cuda", memory_format=CL)
        amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if self.bf16 else nullcontext
        return _torch_runner(self.name, model, x, amp=amp, sync=torch.cuda.synchronize)


@dataclass(frozen=True)
class OnnxRuntime(_Base):
    """The model exported by src.deploy.export.export_onnx, ONNX Runtime's CPU provider: full graph
    optimisation, `threads` intra-op threads, no spin-waiting (sessions timed in turn would
    otherwise spin on each other's cores)."""

    threads: int
    name: str = "onnxruntime"
    plan_backend: str | None = "onnxruntime"
    channels_last: bool = False

    def prepare(self, model: nn.Module, x: torch.Tensor) -> Runner:
        try:
            import onnxruntime as ort

            from src.deploy.export import export_onnx

            # no spin-waiting after a run: idle sessions would steal the cores of the one being timed
            opts = ort_session_options(self.threads)
            with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:  # the session holds the graph
                path = export_onnx(copy.deepcopy(model), Path(tmp) / "model.onnx", tuple(x.shape))
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - any export/runtime failure skips the backend
            raise Skip(f"ONNX export / ONNX Runtime failed: {_first_line(e)}")
        feed = {"input": x.numpy()}
        return lambda: session.run(None, feed)


def make_backend(name: str, *, threads: int) -> Backend:
    """The backend called `name` (one of CPU_BACKENDS + CUDA_BACKENDS)."""
    factories: dict[str, Callable[[], Backend]] = {
        "eager": lambda: Eager("eager"),
        "eager_cl": lambda: Eager("eager_cl", channels_last=True),
        "compile": lambda: Compiled("compile"),
        "onnxruntime": lambda: OnnxRuntime(threads),
        "cuda": lambda: Cuda("cuda"),
        "cuda_bf16": lambda: Cuda("cuda_bf16", bf16=True),
        "cuda_compile": lambda: Compiled("cuda_compile", device="cuda", plan_backend=None),
    }
    if name not in factories:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(factories)})")
    return factories[name]()


def default_backends(requested: Sequence[str] | None) -> list[str]:
    """The requested backend names, or all CPU ones plus the CUDA ones when a GPU is present."""
    if requested:
        return list(requested)
    return list(CPU_BACKENDS) + (list(CUDA_BACKENDS) if torch.cuda.is_available() else [])
