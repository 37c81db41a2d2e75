"""The reproductions: ``make reproduce-cifar [PROFILE=quick|full]``, ``make reproduce-imagenet
DATA=...``, ``make reproduce-cityscapes DATA=...``.

full:       CIFAR-10: ResNet-56/32/20 and MobileNetV2, each dense / A / B, plus the direct-training
            ablation of ResNet-56 A; 3 seeds; the full recipe (200 epochs, conf/optim/cifar_sgd.yaml).
quick:      the same code path sized for a 2-core CPU: real CIFAR-10 (all 50k training images),
            ResNet-20 dense / A / B, 1 seed, a short schedule (QUICK_EPOCHS epochs, cosine).
smoke:      ResNet-20 dense and A, 1 epoch on 512 images: the whole path in a minute (tests).
imagenet:   ResNet-18/34/50, MobileNetV2, EfficientNet-B0/B1, each dense / A / B, 1 seed, their recipes.
cityscapes: HRNetV2-W18-Small-v2 segmentation dense / A / B, 1 seed, the HRNet recipe.

Each run is ``python -m src.train +exp=<dataset>/<model> ...`` in ``<runs>/<profile>/<model>/seed<k>``;
finished runs are skipped and killed ones resume, so the command can simply be re-run. As soon as
a run has finished, its logs (summary.json, config.yaml, overrides.yaml, metrics.csv: no
checkpoints) are copied to ``--collect`` (default ``results/<profile>/runs/<model>/seed<k>``), where
``make tables`` reads them: committed, they regenerate the tables byte for byte. The first
run that fails stops the reproduction: its one-line error (from src.train) is followed by which
run failed and where its log is, and the exit status is that run's.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUN_LOGS = ("summary.json", "config.yaml", "overrides.yaml", "metrics.csv")

QUICK_EPOCHS = 4


def _variants(*names: str) -> list[str]:
    return [m for n in names for m in (n, f"struct_{n}_a", f"struct_{n}_b")]


PROFILES = {
    "full": dict(dataset="cifar10", models=[f"{m}{v}" for m in ("resnet56", "struct_resnet56", "resnet32", "struct_resnet32",
                                              "resnet20", "struct_resnet20", "cifar_mobilenet_v2",
                                              "struct_cifar_mobilenet_v2") for v in ([""] if not m.startswith("struct") else ["_a", "_b"])]
                 + ["struct_resnet56_a_direct"], seeds=[0, 1, 2], overrides=[]),
    "quick": dict(dataset="cifar10", models=_variants("resnet20"), seeds=[0],
                  overrides=[f"trainer.max_epochs={QUICK_EPOCHS}", "trainer.progress_bar=simple",
                             "model.channels_last=true"]),
    "smoke": dict(dataset="cifar10", models=["resnet20", "struct_resnet20_a"], seeds=[0],
                  overrides=["trainer.max_epochs=1", "trainer.progress_bar=none", "data.train_subset=512",
                             "data.test_subset=256", "data.batch_size=64", "structure.bn_recalib_batches=2"]),
    "imagenet": dict(dataset="imagenet", seeds=[0], overrides=[], models=_variants(
        "resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0", "efficientnet_b1")),
    "cityscapes": dict(dataset="cityscapes", seeds=[0], overrides=[], models=_variants("hrnetv2_w18_small_v2_seg")),
}


def commands(profile: str, data: str, runs: Path, extra: list[str]) -> list[list[str]]:
    spec = PROFILES[profile]
    cmds = []
    for model in spec["models"]:
        for seed in spec["seeds"]:
            run_dir = runs / profile / model / f"seed{seed}"
            cmds.append([sys.executable, "-m", "src.train", f"+exp={spec['dataset']}/{model}", f"seed={seed}",
                         f"profile={profile}", f"data.root={data}", f"hydra.run.dir={run_dir}",
                         *spec["overrides"], *extra])
    return cmds


def collect(run_dir: Path, dest: Path) -> list[Path]:
    """Copy a finished run's logs (RUN_LOGS that exist) into `dest`; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RUN_LOGS:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
            written.append(dest / name)
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full", help="which set of runs (default: full)")
    ap.add_argument("--data", required=True,
                    help="dataset root (CIFAR-10: npz folder or torchvision copy; fetched there when absent and online)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="runs go to <runs>/<profile>/<model>/seed<k>")
    ap.add_argument("--collect", type=Path, default=None, metavar="DIR",
                    help="copy each finished run's logs to DIR/<model>/seed<k> (default: results/<profile>/runs)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args(argv)
    cmds = commands(args.profile, args.data, args.runs, args.extra)
    collect_root = args.collect or Path("results") / args.profile / "runs"
    t0 = time.time()
    for i, cmd in enumerate(cmds, 1):
        print(f"[{i}/{len(cmds)}] {' '.join(cmd[2:])}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(cmd).returncode
        if code:
            run_dir = next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1]
            print(f"reproduce: run {i} of {len(cmds)} failed (exit status {code}); its log: {run_dir}/train.log. "
                  f"Fix the cause and run the same command again: finished runs are skipped.", file=sys.stderr)
            sys.exit(code)
        run_dir = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        dest = collect_root / run_dir.relative_to(args.runs / args.profile)
        collect(run_dir, dest)
        print(f"logs copied to {dest}", flush=True)
    print(f"{len(cmds)} runs, {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
