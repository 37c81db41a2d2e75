"""Export the deploy (decomposed) form of a registered model to one self-contained ONNX file,
by default in the fastest exact form for ONNX Runtime at the given batch.

    python -m src.export --ckpt runs/.../deploy.pt [--out FILE] [--opset 18] [--batch 1]
    python -m src.export --model struct_resnet56_a [--ckpt PATH] [--num-classes N] [--out FILE]
                         [--format onnx] [--plan onnxruntime|none] [--threads N]

`--ckpt` accepts, all read by the project's one checkpoint reader (``src.checkpoint``,
``torch.load(weights_only=True)``):

- the deploy artifact (``src.deploy.save_deploy``, format "structured-conv-deploy"): model
  name, classes and preprocessing come from the file (``src.deploy.load_deploy``);
- the older ``deploy.pt`` of ``src.train`` (``{"model", "route", "num_classes", "state_dict"}``
  of the decomposed model): loaded into the decomposed model directly;
- a state_dict of the *train-form* structured model (``torch.save(model.state_dict())``), or a
  dict holding it under ``"state_dict"``; Lightning checkpoints (keys prefixed ``"model."``, as
  ``src.train`` writes them; a run's EMA weights where it kept them) are recognised. It is
  projected, then decomposed. Its full kernels
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
import sys
from pathlib import Path

# the work is done in src/deploy/export.py (files, metadata, the model from a checkpoint) and
# src/deploy/tuning.py (the plan); this module is the command line only
from src.deploy.export import DEFAULT_OPSET, export_onnx_files, load_for_export, onnx_metadata, plan_metadata

__all__ = ["main"]


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
        from src.deploy.tuning import plan_for_onnxruntime

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
