"""What each compression keeps of a trained network before any fine-tuning:
``python -m experiments.compression_start``.

The comparison (``make compare-cifar PROFILE=medium``, results/medium/compare.md) fine-tunes every
compressed model for the same 5 epochs from the same trained dense resnet20. Where the fine-tuned
models differ, this script shows where each one started. From each given dense ``deploy.pt`` it
builds, for every method and target, exactly the model ``src.train`` builds for
``+exp=cifar10/compress/<method>_<target> model.init_from=<file>`` (src/pipeline.py
``build_model``), and reports:

- the relative error of the kernels the method approximates, mean over the in-scope convs,
  ``||W - W'|| / ||W||`` (Frobenius): for ``structured``, W' is W's projection onto the structure
  (what the structural loss pulls the weights to, and what projection at the end keeps); for the
  SVD methods, the kernel the two factor convs compute together; for ``prune_l1``, the first conv
  of every block with its removed filters zeroed (the second conv only loses input channels whose
  activations are gone);
- accuracy on the evaluation set of the model as the fine-tune starts (for ``structured``: after
  projection, the structure the fine-tune must reach), with the dense BatchNorm statistics, and
  with BatchNorm re-estimated on 50 augmented training batches (training images only).

Evaluation only, nothing is chosen from it; by default on the medium profile's primary set (the
held-out training images 45,000-49,999), where the fine-tuned accuracies of compare.md are
measured. A few minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from src.compress import METHODS, scope
from src.data.cifar import CIFAR10DataModule
from src.data.errors import CorruptFileError, DataRootError
from src.pipeline import build_model
from src.structured import project, structural_residuals

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("a", "b")


def compressed(method: str, target: str, init_from: Path) -> nn.Module:
    """The model src.train builds for +exp=cifar10/compress/<method>_<target> from `init_from`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"+exp=cifar10/compress/{method}_{target}", f"model.init_from={init_from}"])
    return build_model(cfg, num_classes=10)


def _effective_kernel(m: nn.Module) -> torch.Tensor:
    """The k x k kernel an SVD pair (src/compress/svd.py: a Sequential of two convs) computes."""
    first, second = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    a, b = first.weight.detach().double(), second.weight.detach().double()
    if b.shape[-2:] == (1, 1):  # weight SVD: k x k to r, then 1 x 1
        return torch.einsum("or,rcij->ocij", b[:, :, 0, 0], a)
    return torch.einsum("orj,rci->ocij", b[:, :, 0, :], a[:, :, :, 0])  # spatial: k x 1 to r, then 1 x k


def kernel_errors(method: str, dense: nn.Module, model: nn.Module) -> list[float]:
    """Relative Frobenius error of each approximated in-scope kernel (see the module docstring)."""
    if method == "structured":
        return list(structural_residuals(model).values())
    out = []
    convs = [(f"{block}.{c}", dense.get_submodule(f"{block}.{c}")) for block, _ in scope(dense) for c in ("conv1", "conv2")]
    for name, conv in convs:
        w = conv.weight.detach().double()
        if method == "prune_l1":
            if not name.endswith("conv1"):
                continue
            kept = model.get_submodule(name).weight.detach().double()  # a subset of w's filters
            out.append(float((1 - kept.square().sum() / w.square().sum()).clamp_min(0).sqrt()))
        else:
            m = model.get_submodule(name)
            approx = m.weight.detach().double() if isinstance(m, nn.Conv2d) else _effective_kernel(m)  # kept dense
            out.append(float((w - approx).norm() / w.norm()))
    return out


@torch.no_grad()
def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y, *_ in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


@torch.no_grad()
def recalibrated(model: nn.Module, batches) -> nn.Module:
    """A copy with BatchNorm running statistics re-estimated (cumulative average) on `batches`."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in batches:
        model(x)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", type=Path, nargs="+", default=[Path("results/medium/runs/resnet20/seed0/deploy.pt")],
                    help="dense deploy.pt file(s) of the medium profile (default: seed 0's committed one)")
    ap.add_argument("--data", default="data/cifar10", help="CIFAR-10 root (npz folder or torchvision copy)")
    ap.add_argument("--holdout", type=int, nargs=2, default=[45_000, 50_000],
                    help="evaluation images: training images [start, end) (default: the medium primary set)")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args(argv)
    for path in args.init_from:
        if not path.is_file():
            raise SystemExit(f"--init-from {path}: no such file (a medium profile dense run's deploy.pt)")
    try:
        dm = CIFAR10DataModule(args.data, eval_set="holdout", holdout=list(args.holdout), train_subset=args.holdout[0],
                               download="false")
        loader = dm.eval_loader(*dm.eval_arrays("primary"))
    except (DataRootError, CorruptFileError, ValueError) as e:
        raise SystemExit(f"--data {args.data} / --holdout {args.holdout[0]} {args.holdout[1]}: {e}") from None
    torch.manual_seed(0)
    calib = list(dm.calibration_batches(50))
    print(f"evaluation set: training images [{args.holdout[0]}, {args.holdout[1]}); BatchNorm re-estimated on "
          f"50 augmented batches of training images 0-{args.holdout[0] - 1}")
    print("| start | target | method | mean kernel error | accuracy at start | with BatchNorm re-estimated |")
    print("|---|---|---|---:|---:|---:|")
    for path in args.init_from:
        dense = build_dense(path)
        print(f"| {path} | - | dense | - | {accuracy(dense, loader):.2f} | {accuracy(recalibrated(dense, calib), loader):.2f} |",
              flush=True)
        for target in args.targets:
            for method in args.methods:
                model = compressed(method, target, path)
                errors = kernel_errors(method, dense, model)
                if method == "structured":
                    project(model)
                model.eval()
                print(f"| {path} | {target.upper()} | {method} | {sum(errors) / len(errors):.3f} | "
                      f"{accuracy(model, loader):.2f} | {accuracy(recalibrated(model, calib), loader):.2f} |", flush=True)


def build_dense(init_from: Path) -> nn.Module:
    """The dense resnet20 of `init_from`, as src.train loads it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=cifar10/resnet20", f"model.init_from={init_from}"])
    return build_model(cfg, num_classes=10).eval()


if __name__ == "__main__":
    main()
