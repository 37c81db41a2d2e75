"""Export the deploy (decomposed) form of a registered model to one self-contained ONNX file,
by default in the fastest exact form for ONNX Runtime at the given batch.

    python -m src.export --ckpt runs/.../deploy.pt [--out FILE] [--opset 18] [--batch 1]
    python -m src.export --model struct_resnet56_a [--ckpt PATH] [--num-classes N] [--out FILE]
                         [--format onnx] [--plan onnxruntime|none] [--threads N]

`--ckpt` accepts, all read with ``torch.load(weights_only=True)``:

- the deploy artifact (``src.deploy.save_deploy``, format "structured-conv-deploy"): model
  name, classes and preprocessing come from the file (``src.deploy.load_deploy``);
- the older ``deploy.pt`` of ``src.train`` (``{"model", "route", "num_classes", "state_dict"}``
  of the decomposed model): loaded into the decomposed model directly;
- a state_dict of the *train-form* structured model (``torch.save(model.state_dict())``), or a
  dict holding it under ``"state_dict"``; Lightning checkpoints (keys prefixed ``"model."``, as
  ``src.train`` writes them) are recognised. It is projected, then decomposed. Its full kernels
  do not record the structure: `--model` must name the variant it was trained as.

Without `--ckpt` the model is randomly initialised (then projected and decomposed): enough to
inspect the graph or time it, not to use its outputs. A dense (non-``struct_``) name exports the
dense model as it is. The graph has a dynamic batch axis (input ``input``, float32 (N, C, H, W),
normalised; output ``output``, the logits).

The deploy plan (``--plan onnxruntime``, the default): before exporting, each structured layer
is timed in its exact forms on ONNX Runtime (CPU provider, ``--threads`` intra-op threads, an
input of ``--batch`` images; ``src.deploy.plan_recompose(..., backend="onnxruntime")``, the
candidates of ``--plan-forms``), and runs in the fastest: decomposed, "spatial", "dense", or
with its sum-pool as a fixed 0/1 conv or a mean-pool folded into the conv (src/deploy/forms.py);
then the whole model is timed with that plan, with none and with each form everywhere, and the
fastest is kept (``--no-plan-refine`` skips this check).
Every form computes the decomposed model's function up to rounding; the plan only changes
speed. It takes seconds to minutes (one export of all candidates, then timing), and is specific
to the machine, thread count and batch it was measured at. ``--plan none`` writes the plain
decomposed graph: every structured conv as its sum-pooling (AveragePool with the padding
counted, times the window size; see src/structured/sumpool.py) followed by a Conv with the
small alpha kernel.

The file is self-contained (weights inline; only a model over protobuf's 2 GB limit gets a
``<out>.data`` file beside it, which must then travel with it) and carries metadata_props:
``model``, ``route``, ``num_classes``, ``task``, ``input_size`` (JSON [C, H, W]), ``mean`` and
``std`` (JSON, 0-1 pixel scale), ``crop_pct``, ``class_names`` (JSON list or ``null``),
``preprocessing`` (where mean/std came from: the deploy file, or this project's defaults for the
model when the checkpoint records none), ``weights``, and the plan: ``deploy_plan`` (JSON
{layer name: form} of the layers not decomposed; ``{}`` with ``--plan none``),
``deploy_plan_measured_on`` (runtime, threads, batch, machine, or ``none``) and
``deploy_plan_summary`` (JSON [[form, layers], ...]). Every file written is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from src.deploy.artifact import FORMAT, default_preprocessing, from_checkpoint_dict, state_dict_mismatch
from src.models import create_model, get_entry
from src.structured import decompose, project

__all__ = ["read_checkpoint", "deploy_model", "load_for_export", "export_onnx", "export_onnx_files",
           "onnx_metadata", "plan_for_onnxruntime", "plan_metadata", "main"]

DEFAULT_OPSET = 18
# initializers up to this size are stored inline (protobuf caps one message at 2 GiB)
INLINE_LIMIT = 1_800_000_000


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


def deploy_model(name: str | None, ckpt: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """The decomposed eval-mode model `name`, with weights from `ckpt` (see module docstring).
    `name` may be omitted when the checkpoint records it (deploy files)."""
    return load_for_export(name, ckpt, num_classes)[0]


def load_for_export(name: str | None, ckpt: str | Path | None = None, num_classes: int | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """(decomposed eval-mode model, its description for the ONNX metadata); see deploy_model."""
    state, meta = read_checkpoint(ckpt) if ckpt is not None else (None, {})
    recorded = meta.get("model")
    if name is None:
        if not isinstance(recorded, str):
            raise ValueError("no --model given and the checkpoint does not record one"
                             if ckpt is not None else "give --model (or a --ckpt that records it)")
        name = recorded
    elif isinstance(recorded, str) and recorded != name:
        raise ValueError(f"checkpoint {ckpt} is for model '{recorded}', not '{name}'")
    get_entry(name)  # unknown names raise with suggestions
    if meta.get("format") is not None:  # the deploy artifact: src.deploy reads it
        deployed = from_checkpoint_dict({**meta, "state_dict": state}, Path(ckpt))
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


def plan_for_onnxruntime(model: nn.Module, input_shape: tuple[int, ...], *, threads: int | None = None,
                         reps: int = 15, forms: Sequence[str] | None = None, refine: bool = True) -> dict[str, str]:
    """The ONNX Runtime deploy plan of a decomposed (or train-form) model, measured on a random
    input of `input_shape` (B, C, H, W): layer name -> form (src/deploy/tuning.py, plan_recompose;
    `refine`: checked on the whole model against no plan and each form everywhere)."""
    from src.deploy import plan_recompose

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(*input_shape)
    return plan_recompose(model, x, backend="onnxruntime", threads=threads, reps=reps, forms=forms, refine=refine)


def plan_metadata(plan: Mapping[str, str] | None, model: nn.Module, measured_on: str) -> dict[str, str]:
    """The deploy plan's ONNX metadata_props (see the module docstring); `model` is the model the
    plan was made for (decomposed or train form, before the plan is applied)."""
    from src.deploy import plan_summary
    from src.deploy.forms import plannable_layers

    plan = dict(plan or {})
    total = sum(1 for _ in plannable_layers(model))
    return {"deploy_plan": json.dumps(plan), "deploy_plan_measured_on": measured_on,
            "deploy_plan_summary": json.dumps([list(kv) for kv in plan_summary(plan, total)])}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m src.export", description="\n\n".join(__doc__.split("\n\n", 2)[:2]),
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", metavar="NAME",
                    help="registered model name, e.g. struct_resnet56_a (src.models.list_models()); "
                         "optional when --ckpt is a deploy file, which records it")
    ap.add_argument("--ckpt", metavar="PATH",
                    help="weights: a deploy file, or a train-form state_dict / Lightning checkpoint (see "
                         "below); omitted: random weights")
    ap.add_argument("--format", choices=("onnx",), default="onnx", help="output format (only onnx)")
    ap.add_argument("--out", metavar="FILE",
                    help="output file (default: exports/<model>.onnx under the current folder; exports/ "
                         "is git-ignored)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                    help=f"ONNX opset version, >= 17 (default {DEFAULT_OPSET})")
    ap.add_argument("--batch", type=int, default=1, metavar="B",
                    help="batch size the deploy plan is measured at, and of the example input used for tracing; "
                         "the batch axis stays dynamic (default 1)")
    ap.add_argument("--plan", choices=("onnxruntime", "none"), default="onnxruntime",
                    help="onnxruntime (default): each layer in its fastest exact form, measured on ONNX Runtime "
                         "at --batch; none: the plain decomposed graph")
    ap.add_argument("--threads", type=int, metavar="N",
                    help="ONNX Runtime intra-op threads the plan is measured with (default: torch's thread count, "
                         "normally the number of cores); deploy with the same")
    ap.add_argument("--plan-forms", nargs="+", metavar="FORM",
                    help="candidate forms of the plan (default: src.deploy.PLAN_FORMS['onnxruntime']; e.g. "
                         "decomposed dense 'spatial[sp=mean]'; 'decomposed' must be among them)")
    ap.add_argument("--no-plan-refine", dest="plan_refine", action="store_false",
                    help="keep the per-layer plan without checking it on the whole model (by default the whole "
                         "model is also timed with no plan and with each form everywhere, and the fastest kept)")
    ap.add_argument("--plan-reps", type=int, default=15, metavar="N",
                    help="timed repetitions per candidate form while planning (default 15)")
    ap.add_argument("--num-classes", type=int, metavar="N",
                    help="classifier size (default: the checkpoint's, else the model's registered one)")
    return ap


def main(argv: list[str] | None = None) -> Path:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        model, info = load_for_export(args.model, args.ckpt, args.num_classes)
    except ValueError as e:
        ap.error(str(e))
    if args.batch < 1 or (args.threads is not None and args.threads < 1) or args.plan_reps < 1:
        ap.error("--batch, --threads and --plan-reps must be >= 1")
    name = info["model"]
    out = Path(args.out or Path("exports") / f"{name}.onnx")
    shape = (args.batch, *info["input_size"])
    metadata = onnx_metadata(info)
    if args.plan == "onnxruntime":
        from src.deploy import decompose_planned
        from src.deploy.runtimes import machine_label, runtime_label

        print(f"measuring the ONNX Runtime deploy plan of {name} at batch {args.batch} ...", flush=True)
        try:
            plan = plan_for_onnxruntime(model, shape, threads=args.threads, reps=args.plan_reps, forms=args.plan_forms,
                                        refine=args.plan_refine)
        except ValueError as e:
            ap.error(str(e))
        measured_on = f"{runtime_label('onnxruntime', args.threads)}, batch {args.batch}; {machine_label()}"
    else:
        plan, measured_on = {}, "none (--plan none: the plain decomposed graph)"
    metadata.update(plan_metadata(plan, model, measured_on))
    if plan:
        model = decompose_planned(model, plan)
    files = export_onnx_files(model, out, shape, args.opset, metadata)
    summary = ", ".join(f"{n} {f}" for f, n in json.loads(metadata["deploy_plan_summary"]))
    how = "decomposed" if args.plan == "none" else f"ONNX Runtime plan at batch {args.batch}: {summary}"
    print(f"exported {name} ({how}{'' if args.ckpt else '; random weights'}; opset {args.opset}); wrote:")
    for f in files:
        print(f"  {f} ({f.stat().st_size / 1e6:.1f} MB)")
    if len(files) > 1:
        print(f"  (the model is over 2 GB: keep {files[1].name} in the same folder as {files[0].name})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
