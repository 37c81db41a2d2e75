"""How fast the structural loss alone pulls a trained dense network to structure under the
comparison's fine-tuning schedule: ``python -m experiments.compare_lambda``.

The medium profile's lambda (0.1) was chosen for 15 epochs from scratch at lr 0.1. The comparison
(``PROFILE=medium_compare``) fine-tunes a trained dense resnet20 for 5 epochs at lr 0.01, starting
far from structure (mean relative residual about 0.55 at target A). Where the weights sit at the end
of training (the balance of task gradient and lambda x structural gradient) does not depend on the
learning rate, but how fast they get there scales with lr x lambda, so lambda 0.1 at lr 0.1 / 10
may not arrive within 5 epochs, and projection would then cut a far-from-structured network.

This script measures it without any evaluation data: from each given dense ``deploy.pt``, the model
of ``+exp=cifar10/compress/structured_<target>`` (the dense weights copied into structured layers,
exactly as ``src.train`` builds it), trained on the structural loss alone (no task loss: the most
favourable case for reaching structure) with the comparison's optimizer and schedule (``cifar_sgd``
at lr COMPARE_LR: SGD momentum 0.9, weight decay 5e-4, per-step cosine over COMPARE_EPOCHS epochs
of 352 steps, lambda ramped over the first epoch as ``structure.lam_ramp_epochs``), and prints the
mean relative residual over the structured layers at the end of every epoch, per lambda. Pure
weight arithmetic: about a minute on one CPU thread.

The rule it informs (``compare_lambda`` in conf/profiles/_chosen.yaml): the smallest lambda that gets
under the medium profile's own final residual, in this favourable case, within the first 3 of the
5 epochs, leaving the rest for the task loss to recover.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from experiments.reproduce import profile_spec
from src.lit.module import lambda_at
from src.lit.optim import build_optimizer, build_scheduler
from src.pipeline import build_model
from src.structured import structural_loss
from src.structured.ops import structural_residuals

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = math.ceil(45_000 / 128)  # the comparison's 45,000 training images, batch 128


def _compare_setting(key: str) -> float:
    """trainer.max_epochs / optim.lr of the comparison profile (conf/profiles/medium_compare.yaml)."""
    for item in profile_spec("medium_compare")["overrides"]:
        if item.startswith(f"{key}="):
            return float(item.split("=", 1)[1])
    raise KeyError(f"conf/profiles/medium_compare.yaml sets no {key}")


COMPARE_EPOCHS = int(_compare_setting("trainer.max_epochs"))
COMPARE_LR = _compare_setting("optim.lr")


def compressed(target: str, init_from: Path) -> tuple[torch.nn.Module, dict]:
    """The model src.train builds for +exp=cifar10/compress/structured_<target> from `init_from`,
    and the run's optimizer config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"+exp=cifar10/compress/structured_{target}", f"model.init_from={init_from}",
                                          f"optim.lr={COMPARE_LR}"])
    return build_model(cfg, num_classes=10), OmegaConf.to_container(cfg.optim, resolve=True)


def mean_residual(model: torch.nn.Module) -> float:
    res = structural_residuals(model)
    return sum(res.values()) / len(res)


def simulate(model: torch.nn.Module, optim_cfg: dict, lam: float, epochs: int, ramp_epochs: float,
             steps_per_epoch: int = STEPS_PER_EPOCH) -> list[float]:
    """Mean relative residual after each epoch of structural-loss-only training."""
    opt = build_optimizer(model, optim_cfg)
    sched = build_scheduler(opt, optim_cfg, epochs * steps_per_epoch, epochs)
    out = []
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            weight = lambda_at(lam, ramp_epochs, epoch + step / steps_per_epoch)
            opt.zero_grad(set_to_none=True)
            (weight * structural_loss(model)).backward()
            opt.step()
            sched.step()
        out.append(mean_residual(model))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", type=Path, nargs="+",
                    default=[Path("runs/medium/resnet20/seed0/deploy.pt")],
                    help="dense deploy.pt file(s) of the medium profile (default: seed 0)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0])
    ap.add_argument("--targets", nargs="+", default=["a", "b"], choices=["a", "b"])
    ap.add_argument("--ramp-epochs", type=float, default=1.0, help="structure.lam_ramp_epochs (default 1, as the runs)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"structural loss only, lr {COMPARE_LR} cosine over {COMPARE_EPOCHS} x {STEPS_PER_EPOCH} steps, "
          f"lambda ramped over {args.ramp_epochs:g} epoch(s); mean relative residual after each epoch")
    print("| start | target | lambda | at start | " + " | ".join(f"epoch {e + 1}" for e in range(COMPARE_EPOCHS)) + " |")
    print("|---|---|---:|---:|" + "---:|" * COMPARE_EPOCHS)
    for path in args.init_from:
        if not path.is_file():
            raise SystemExit(f"--init-from {path}: no such file (a medium profile dense run's deploy.pt)")
        for target in args.targets:
            for lam in args.lambdas:
                model, optim_cfg = compressed(target, path)
                start = mean_residual(model)
                curve = simulate(model, optim_cfg, lam, COMPARE_EPOCHS, args.ramp_epochs)
                print(f"| {path} | {target.upper()} | {lam:g} | {start:.3g} | " + " | ".join(f"{r:.2g}" for r in curve) + " |",
                      flush=True)


if __name__ == "__main__":
    main()
