"""The backends a deployed model runs on, as the deploy plan and the benchmarks run it.

- ``eager``: plain PyTorch under ``torch.no_grad``, in the input's memory format;
- ``compile``: ``torch.compile`` (inductor, static shapes, ``freezing`` on: weights
  constant-folded, as for CPU inference), inside :func:`compile_session`;
- ``onnxruntime``: the ONNX graph of :func:`src.deploy.export.export_onnx` (the dynamo exporter) on ONNX
  Runtime's CPU provider with :func:`ort_session_options`: full graph optimisation, `threads`
  intra-op threads, no spin-waiting (sessions timed in turn would otherwise spin on each other's
  cores).

Each ``*_runner(model, x)`` returns a zero-argument callable running `model` on `x` (already
called once, so compiled where the backend compiles). :func:`export_many_onnx` exports several
small modules in one export and splits the graph per module: planning for ONNX Runtime times
each layer's candidate forms as the exporter writes them, at the cost of one export.
"""

from __future__ import annotations

import io
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .export import DEFAULT_OPSET, export_onnx

__all__ = ["RUNTIMES", "Runner", "inductor_freezing", "compile_session", "eager_runner", "compiled_runner",
           "ort_session_options", "ort_session", "onnxruntime_runner", "export_many_onnx", "runtime_label",
           "machine_label"]

RUNTIMES = ("eager", "compile", "onnxruntime")
Runner = Callable[[], object]


@contextmanager
def inductor_freezing(enabled: bool = True) -> Iterator[None]:
    """``torch._inductor.config.freezing`` (weights constant-folded into the compiled graph, as for
    CPU inference) inside the block, its previous value after it. Compilation happens lazily, at
    the first call, so the compiled model must also be first called inside the block."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=enabled):
        yield


@contextmanager
def compile_session() -> Iterator[None]:
    """A fresh dynamo code cache (no recompile limits across the modules compiled in the block,
    no dynamic batch) and inductor freezing on, restored after the block."""
    torch._dynamo.reset()
    with inductor_freezing(True):
        yield


def eager_runner(model: nn.Module, x: torch.Tensor) -> Runner:
    def run():
        with torch.no_grad():
            return model(x)

    run()
    return run


def compiled_runner(model: nn.Module, x: torch.Tensor) -> Runner:
    """`model` compiled (inside :func:`compile_session`), static shapes; compiled by the first call, here."""
    return eager_runner(torch.compile(model, dynamic=False), x)


def ort_session_options(threads: int | None = None):
    """ONNX Runtime session options: full graph optimisation, `threads` intra-op threads (None:
    torch's current count), one inter-op thread, no spin-waiting."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def ort_session(model: "str | Path | bytes", threads: int | None = None, profile: bool = False):
    """An ONNX Runtime CPU session on a file or a serialized model."""
    import onnxruntime as ort

    opts = ort_session_options(threads)
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "ort_profile")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnxruntime_runner(model: nn.Module, x: torch.Tensor, threads: int | None = None) -> Runner:
    """`model` exported by src.deploy.export.export_onnx (dynamic batch), on ONNX Runtime."""

    with tempfile.TemporaryDirectory(prefix="onnx_runner_") as tmp:  # the session holds the graph
        path = export_onnx(model, Path(tmp) / "model.onnx", tuple(x.shape))
        session = ort_session(path, threads)
    feed = {"input": x.detach().cpu().numpy()}

    def run():
        return session.run(None, feed)

    run()
    return run


class _Many(nn.Module):
    """Several modules side by side: forward(*inputs) -> one output per module, module i reading
    input index[i]."""

    def __init__(self, modules: Sequence[nn.Module], index: Sequence[int]):
        super().__init__()
        self.mods = nn.ModuleList(modules)
        self.index = list(index)

    def forward(self, *xs):
        return tuple(m(xs[i]) for m, i in zip(self.mods, self.index))


def _distinct(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`inputs` with every tensor that shares memory with an earlier one replaced by a copy.

    The dynamo exporter merges graph inputs that alias one another (the same tensor passed twice,
    e.g. the recorded input of a residual block's first conv and of its downsample conv): the
    nodes of both then read one input, and the graph split per module by input name is invalid
    ("Node input 'x3' is not a graph input ...")."""
    seen: set[int] = set()
    out = []
    for x in inputs:
        ptr = x.untyped_storage().data_ptr()
        out.append(x.clone() if ptr in seen else x)
        seen.add(ptr)
    return out


def export_many_onnx(modules: Sequence[nn.Module], inputs: Sequence[torch.Tensor], index: Sequence[int],
                     opset: int | None = None) -> list[bytes]:
    """One serialized ONNX model per module (module i on inputs[index[i]], static shapes), from a
    single dynamo export of all of them side by side, split with onnx.utils.Extractor."""
    import onnx
    import onnx.utils

    wrapper = _Many([m.eval() for m in modules], index).eval()
    inputs = _distinct(inputs)
    in_names = [f"x{i}" for i in range(len(inputs))]
    out_names = [f"y{i}" for i in range(len(modules))]
    with tempfile.TemporaryDirectory(prefix="onnx_many_") as tmp, torch.no_grad():
        path = Path(tmp) / "many.onnx"
        torch.onnx.export(wrapper, tuple(inputs), str(path), dynamo=True, opset_version=opset or DEFAULT_OPSET,
                          input_names=in_names, output_names=out_names, verbose=False)
        proto = onnx.load(str(path), load_external_data=True)
    extractor = onnx.utils.Extractor(proto)
    out = []
    for i, j in enumerate(index):
        part = extractor.extract_model([in_names[j]], [out_names[i]])
        buf = io.BytesIO()
        onnx.save_model(part, buf)
        out.append(buf.getvalue())
    return out


def machine_label() -> str:
    """'<CPU model>, <n> threads, torch <version>'."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def runtime_label(runtime: str, threads: int | None = None) -> str:
    """e.g. 'onnxruntime 1.32.0, 2 threads' (what a plan was measured on)."""
    n = torch.get_num_threads() if threads is None else threads
    if runtime == "onnxruntime":
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} (CPU), {n} threads"
    return f"{'torch.compile (inductor)' if runtime == 'compile' else 'eager PyTorch'} {torch.__version__}, {n} threads"
