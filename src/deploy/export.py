"""ONNX export of a deployed model: the files, their metadata, and the model to export from a
checkpoint. ``python -m src.export`` (src/export.py) is its command line; see its help for the
checkpoint forms accepted and the metadata written.

- :func:`export_onnx` / :func:`export_onnx_files`: write a model (eval mode) to one
  self-contained ONNX file with a dynamic batch axis (input ``input``, float32 (N, C, H, W),
  normalised; output ``output``) and metadata_props; the dynamo exporter, opset >= 17.
- :func:`load_for_export` / :func:`deploy_model`: the decomposed eval-mode model of a registered
  name, with weights from a deploy file, a train-form state_dict or a Lightning checkpoint (read
  by ``src.checkpoint.read_checkpoint``), and its description for the metadata
  (:func:`onnx_metadata`); :func:`plan_metadata`: the deploy plan's metadata.

The ONNX Runtime deploy plan itself is measured by ``src.deploy.tuning.plan_for_onnxruntime``.
This module does not import the tuning or the runtimes (which import it, to time exported graphs),
nor the model zoo until a model is loaded.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from src.checkpoint import read_checkpoint, state_dict_mismatch
from src.structured import decompose, project

from .artifact import FORMAT, default_preprocessing, from_checkpoint
from .forms import plan_summary, plannable_layers

__all__ = ["DEFAULT_OPSET", "deploy_model", "load_for_export", "export_onnx", "export_onnx_files", "onnx_metadata",
           "plan_metadata"]

DEFAULT_OPSET = 18
# initializers up to this size are stored inline (protobuf caps one message at 2 GiB)
INLINE_LIMIT = 1_800_000_000


def deploy_model(name: str | None, ckpt: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """The decomposed eval-mode model `name`, with weights from `ckpt` (see module docstring).
    `name` may be omitted when the checkpoint records it (deploy files)."""
    return load_for_export(name, ckpt, num_classes)[0]


def load_for_export(name: str | None, ckpt: str | Path | None = None, num_classes: int | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(decomposed eval-mode model, its description for the ONNX metadata); see deploy_model."""
    from src.models import create_model, get_entry  # (the model zoo, imported when used)

    checkpoint = read_checkpoint(ckpt) if ckpt is not None else None
    state, meta = (checkpoint.state_dict, checkpoint.meta) if checkpoint is not None else (None, {})
    recorded = meta.get("model")
    if name is None:
        if not isinstance(recorded, str):
            raise ValueError("no --model given and the checkpoint does not record one"
                             if ckpt is not None else "give --model (or a --ckpt that records it)")
        name = recorded
    elif isinstance(recorded, str) and recorded != name:
        raise ValueError(f"checkpoint {ckpt} is for model '{recorded}', not '{name}'")
    get_entry(name)  # unknown names raise with suggestions
    if meta.get("format") is not None:  # the deploy artifact: src.deploy.artifact reads it
        deployed = from_checkpoint(checkpoint, Path(ckpt))
        if num_classes is not None and num_classes != deployed.num_classes:
            raise ValueError(f"checkpoint {ckpt} has num_classes={deployed.num_classes}, not {num_classes}")
        info = deployed.metadata()
        info.update(preprocessing=f"recorded in {Path(ckpt).name}", weights=Path(ckpt).name)
        return deployed.model, info
    if num_classes is None and isinstance(meta.get("num_classes"), int):
        num_classes = meta["num_classes"]
    info = {"format": FORMAT, "model": name, "route": meta.get("route"),
            "num_classes": num_classes or get_entry(name).num_classes,
            **default_preprocessing(name, num_classes),
            "preprocessing": "this project's defaults for the model (the checkpoint records none)",
            "weights": Path(ckpt).name if ckpt is not None else "random (no --ckpt)"}
    model = create_model(name, num_classes=num_classes).eval()
    if state is None:
        return decompose(project(model)), info
    train_form_error = state_dict_mismatch(model, state)
    if not train_form_error:
        model.load_state_dict(state)
        return decompose(project(model)), info
    deployed = decompose(model, tol=math.inf)  # the same architecture in deploy form
    if not state_dict_mismatch(deployed, state):
        deployed.load_state_dict(state)
        return deployed, info
    raise ValueError(f"checkpoint {ckpt} does not fit model '{name}' (num_classes="
                     f"{num_classes or get_entry(name).num_classes}): {train_form_error}")


def onnx_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    """ONNX metadata_props (strings; lists and None as JSON) from a load_for_export description."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items() if k != "format"}


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                opset: int = DEFAULT_OPSET, metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` (eval mode) to ONNX at `path` with a dynamic batch axis; `input_shape` is
    the example input's (B, C, H, W); `metadata` goes to the model's metadata_props. One file
    (weights inline) unless the model is over 2 GB; :func:`export_onnx_files` lists the files."""
    return export_onnx_files(model, path, input_shape, opset, metadata)[0]


def export_onnx_files(model: nn.Module, path: str | Path, input_shape: tuple[int, ...],
                      opset: int = DEFAULT_OPSET, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """export_onnx, returning every file written: [path], or [path, path + ".data"] for a model
    over protobuf's 2 GB limit (external weights)."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} is too old: this export needs opset >= 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*input_shape)
    with tempfile.TemporaryDirectory(prefix="onnx_export_") as tmp:
        # the exporter may write the weights to a side file; onnx.load gathers them back
        raw = Path(tmp) / path.name
        with torch.no_grad():
            torch.onnx.export(
                model.eval(), (example,), str(raw), dynamo=True, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )
        proto = onnx.load(str(raw), load_external_data=True)
    if metadata:
        onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
    data = path.with_name(path.name + ".data")
    if sum(t.ByteSize() for t in proto.graph.initializer) < INLINE_LIMIT:
        onnx.save_model(proto, str(path), save_as_external_data=False)
        if data.is_file():  # a stale side file of an earlier export to the same name
            data.unlink()
            print(f"removed {data} (left by an earlier export; {path} no longer uses it)")
        return [path]
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]


def plan_metadata(plan: Mapping[str, str] | None, model: nn.Module, measured_on: str) -> dict[str, str]:
    """The deploy plan's ONNX metadata_props (see the module docstring); `model` is the model the
    plan was made for (decomposed or train form, before the plan is applied)."""
    plan = dict(plan or {})
    total = sum(1 for _ in plannable_layers(model))
    return {"deploy_plan": json.dumps(plan), "deploy_plan_measured_on": measured_on,
            "deploy_plan_summary": json.dumps([list(kv) for kv in plan_summary(plan, total)])}
