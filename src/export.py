"""Export the deploy (decomposed) form of a registered model to ONNX.

    python -m src.export --model struct_resnet56_a --ckpt PATH [--format onnx] [--out FILE]
                         [--opset 18] [--batch 1] [--num-classes N]

`--ckpt` accepts, all read with ``torch.load(weights_only=True)``:

- a state_dict of the *train-form* structured model (``torch.save(model.state_dict())``), or a
  dict holding it under ``"state_dict"``; Lightning checkpoints (keys prefixed ``"model."``, as
  ``src.train`` writes them) are recognised. It is projected, then decomposed. Its full kernels
  do not record the structure: `--model` must name the variant it was trained as.
- the ``deploy.pt`` that ``src.train`` writes (the state_dict of the decomposed model, with
  ``"model"`` and ``"num_classes"`` entries): loaded into the decomposed model directly.

Without `--ckpt` the model is randomly initialised (then projected and decomposed): enough to
inspect the graph or time it, not to use its outputs. A dense (non-``struct_``) name exports the
dense model as it is. The graph has a dynamic batch axis (input ``input``, output ``output``);
every structured conv appears as its sum-pooling (AveragePool with the padding counted, times
the window size; see src/structured/sumpool.py) followed by a Conv with the small alpha kernel.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from src.models import create_model, get_entry
from src.structured import decompose, project

__all__ = ["read_checkpoint", "deploy_model", "export_onnx", "main"]

DEFAULT_OPSET = 18


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a checkpoint file; ValueError naming `path` if it cannot be
    used. Lightning's "model." key prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"cannot read checkpoint {path}: corrupt, or not a torch.save file of tensors "
                         f"and plain containers ({type(e).__name__})") from None
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"checkpoint {path} holds no state_dict (a mapping of names to tensors, "
                         "or a dict with one under 'state_dict')")
    state = dict(obj)
    if all(k.startswith("model.") for k in state):  # a LightningModule holding the net as .model
        state = {k[len("model."):]: v for k, v in state.items()}
    return state, meta


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Short description of how `state` fails to fit `model` ('' if it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    return "; ".join(parts)


def deploy_model(name: str | None, ckpt: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """The decomposed eval-mode model `name`, with weights from `ckpt` (see module docstring).
    `name` may be omitted when the checkpoint records it (src.train's deploy.pt)."""
    state, meta = read_checkpoint(ckpt) if ckpt is not None else (None, {})
    recorded = meta.get("model")
    if name is None:
        if not isinstance(recorded, str):
            raise ValueError("no --model given and the checkpoint does not record one")
        name = recorded
    elif isinstance(recorded, str) and recorded != name:
        raise ValueError(f"checkpoint {ckpt} is for model '{recorded}', not '{name}'")
    get_entry(name)  # unknown names raise with suggestions
    if num_classes is None and isinstance(meta.get("num_classes"), int):
        num_classes = meta["num_classes"]
    model = create_model(name, num_classes=num_classes).eval()
    if state is None:
        return decompose(project(model))
    train_form_error = _mismatch(model, state)
    if not train_form_error:
        model.load_state_dict(state)
        return decompose(project(model))
    deployed = decompose(model, tol=math.inf)  # the same architecture in deploy form
    if not _mismatch(deployed, state):
        deployed.load_state_dict(state)
        return deployed
    raise ValueError(f"checkpoint {ckpt} does not fit model '{name}' (num_classes="
                     f"{num_classes or get_entry(name).num_classes}): {train_form_error}")


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (eval mode) to ONNX at `path` with a dynamic batch axis; `input_shape` is
    the example input's (B, C, H, W)."""
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: this export needs opset >= 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*input_shape)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (example,), str(path), dynamo=True, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
    return path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="registered name, e.g. struct_resnet56_a (optional with src.train's deploy.pt)")
    ap.add_argument("--ckpt", help="checkpoint (see above); omitted: random weights")
    ap.add_argument("--format", choices=("onnx",), default="onnx")
    ap.add_argument("--out", help="output file (default: exports/<model>.onnx)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--batch", type=int, default=1, help="batch of the example input (the axis stays dynamic)")
    ap.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's or the model's)")
    args = ap.parse_args(argv)
    try:
        model = deploy_model(args.model, args.ckpt, args.num_classes)
    except ValueError as e:
        ap.error(str(e))
    name = args.model or read_checkpoint(args.ckpt)[1]["model"]
    out = Path(args.out or f"exports/{name}.onnx")
    export_onnx(model, out, (args.batch, *get_entry(name).input_size), args.opset)
    print(f"wrote {out} ({name}, decomposed{'' if args.ckpt else ', random weights'}, opset {args.opset})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
