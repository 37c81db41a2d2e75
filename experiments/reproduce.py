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
checkpoints) and its trained model (deploy.pt) are copied to
``--collect`` (default ``results/<profile>/runs/<model>/seed<k>``), where ``make tables`` reads
them: committed, they regenerate the tables byte for byte. Runs whose logs are already there (a
fresh clone of the committed results) are skipped too, unless ``--rerun-collected``. Into results/ it runs
only from committed code (``--allow-dirty`` otherwise), and a killed run resumes only on the
training code it started with (src/train.py: check_code_unchanged). ``--stash`` keeps the
unfinished runs' resume state beside their logs (``.../inflight``, to commit) for a machine that
does not keep ``runs/``; the next invocation restores it and the runs resume. The first
run that fails stops the reproduction: its one-line error (from src.train) is followed by which
run failed and where its log is, and the exit status is that run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUN_LOGS = ("summary.json", "config.yaml", "overrides.yaml", "metrics.csv")

QUICK_EPOCHS = 4
MEDIUM_EPOCHS = 15
# lambda of the medium profile's regularized runs, chosen by PROFILE=medium_sweep on the validation
# split (results/medium/sweep/cifar10.md); None until that sweep has chosen, which stops those runs.
# Chosen (seed 0, 15 epochs, validation images 40,000-44,999): lambda 0.1, mean decomposed accuracy
# 83.93 over struct_resnet20_a / _b, against 83.76 (0.5) and 83.68 (2).
MEDIUM_LAMBDA: float | None = 0.1
# whether those runs re-estimate BatchNorm after projection (structure.bn_recalib), chosen by the same
# sweep (its "BatchNorm recalibration after projection" table): off, recalibrating changed the
# projected models' accuracy by -0.04 +- 0.14 over the 6 sweep runs (4 worse, 2 better)
MEDIUM_BN_RECALIB: bool = False
# (planned 0.5, 2, 8; 8 was replaced by 0.1 after 0.5 beat 2 on both models: the sweep extends
# in the direction that improved, see results/medium/sweep/cifar10.md)
SWEEP_LAMBDAS = (0.1, 0.5, 2.0)
# Compression baselines (PROFILE=medium_compare, `make compare-cifar`): every method fine-tunes
# the medium profile's trained dense resnet20 of the same seed, same recipe for all.
COMPARE_EPOCHS = 5
COMPARE_LR = 0.01
COMPARE_METHODS = ("structured", "prune_l1", "svd_weight", "svd_spatial")
# lambda of the comparison's structured fine-tunes. Not MEDIUM_LAMBDA: that was chosen for 15 epochs
# from scratch at lr 0.1; here a trained dense network (mean relative residual about 0.55 at A, 0.68
# at B) has 5 epochs at lr 0.01, and how fast the structural loss pulls it to structure scales with
# lr x lambda. Chosen without evaluation data by `python -m experiments.compare_lambda` (structural
# loss alone, the fine-tune's optimizer and schedule, from the dense seed-0 run): the smallest of
# 0.1 / 0.5 / 1 / 2 whose residual falls below the medium sweep's own final residual at lambda 0.1
# (1.0e-2 at A, 4.1e-2 at B) within 3 of the 5 epochs. Measured, mean residual at the end of epoch
# 3 (A / B): 0.1: 0.36 / 0.53; 0.5: 0.013 / 0.068; 1: 2.0e-4 / 8.7e-4; 2: 2.5e-4 / 2.6e-4. At 0.1
# the network would stay far from structure (0.33 / 0.50 after 5 epochs) and projection would cut it.
# 1 is also the lambda that keeps lr x lambda at the medium profile's (0.1 x 0.1).
COMPARE_LAMBDA = 1.0


def _variants(*names: str) -> list[str]:
    return [m for n in names for m in (n, f"struct_{n}_a", f"struct_{n}_b")]


def _holdout(train: int, end: int) -> list[str]:
    """Train on the first `train` training images; evaluate on training images [train, end)."""
    return [f"data.train_subset={train}", "data.eval_set=holdout", f"data.holdout=[{train},{end}]"]


# A run of a profile: (label, experiment, overrides); the label names its directory
# <runs>/<profile>/<label>/seed<k> and its logs' folder results/<profile>/runs/<label>/seed<k>.
MEDIUM_COMMON = [f"trainer.max_epochs={MEDIUM_EPOCHS}", "model.channels_last=true", "trainer.progress_bar=simple", *_holdout(45_000, 50_000)]
PROFILES = {
    "full": dict(dataset="cifar10", models=[f"{m}{v}" for m in ("resnet56", "struct_resnet56", "resnet32", "struct_resnet32",
                                              "resnet20", "struct_resnet20", "cifar_mobilenet_v2",
                                              "struct_cifar_mobilenet_v2") for v in ([""] if not m.startswith("struct") else ["_a", "_b"])]
                 + ["struct_resnet56_a_direct"], seeds=[0, 1, 2], overrides=[]),
    "quick": dict(dataset="cifar10", models=_variants("resnet20"), seeds=[0],
                  overrides=[f"trainer.max_epochs={QUICK_EPOCHS}", "trainer.progress_bar=simple",
                             "model.channels_last=true"]),
    # The CPU reference reproduction (README, "Results"): exact held-out evaluation images, 3 seeds
    # of ResNet-20 dense / A / B / A-direct and 1 of ResNet-56 dense / A, 15 epochs; the runs that
    # do not depend on lambda first. Two runs side by side with one thread each (measured faster in
    # total than one run with two threads on a 2-core machine).
    "medium": dict(dataset="cifar10", seeds=[0, 1, 2], jobs=2, threads=1, results="results/medium",
                   overrides=[*MEDIUM_COMMON, "eval.robustness=true"],
                   runs=[("resnet20", "resnet20", []), ("struct_resnet20_a_direct", "struct_resnet20_a_direct", []),
                         ("resnet56", "resnet56", ["seeds=0"]),
                         ("struct_resnet20_a", "struct_resnet20_a", ["lambda"]),
                         ("struct_resnet20_b", "struct_resnet20_b", ["lambda"]),
                         ("struct_resnet56_a", "struct_resnet56_a", ["lambda", "seeds=0"])]),
    # Choosing lambda without the test set: train on images [0, 40000), validate on [40000, 45000).
    "medium_sweep": dict(dataset="cifar10", seeds=[0], jobs=2, threads=1, results="results/medium/sweep",
                         overrides=[f"trainer.max_epochs={MEDIUM_EPOCHS}", "model.channels_last=true", "trainer.progress_bar=simple",
                                    *_holdout(40_000, 45_000), "eval.official_test=false"],
                         runs=[(f"{m}_lam{lam:g}", m, [f"structure.lam={lam}", f"tag=_lam{lam:g}"])
                               for lam in SWEEP_LAMBDAS for m in ("struct_resnet20_a", "struct_resnet20_b")]),
    # Why struct_resnet20_a trails dense in the medium profile (README, claims (a) / (b)): on the
    # validation split (never the primary set), seed 0. The dense baseline of the split at 15 epochs
    # (the lambda sweep had none), the gap at 8 epochs (does it shrink with training length?) and a
    # lambda ramp over half the run (does structure from the first epoch cost accuracy?).
    "medium_gap": dict(dataset="cifar10", seeds=[0], jobs=2, threads=1, results="results/medium/gap",
                       overrides=["model.channels_last=true", "trainer.progress_bar=simple",
                                  *_holdout(40_000, 45_000), "eval.official_test=false"],
                       runs=[("resnet20", "resnet20", [f"trainer.max_epochs={MEDIUM_EPOCHS}"]),
                             ("struct_resnet20_a", "struct_resnet20_a", [f"trainer.max_epochs={MEDIUM_EPOCHS}", "lambda"]),
                             ("struct_resnet20_a_ramp7", "struct_resnet20_a",
                              [f"trainer.max_epochs={MEDIUM_EPOCHS}", "lambda", "structure.lam_ramp_epochs=7"]),
                             ("resnet20_ep8", "resnet20", ["trainer.max_epochs=8", "tag=_ep8"]),
                             ("struct_resnet20_a_ep8", "struct_resnet20_a", ["trainer.max_epochs=8", "tag=_ep8", "lambda"])]),
    # Against the alternatives at equal MACs: each method compresses the medium profile's trained
    # dense resnet20 (seed k -> seed k) to the MAC ratio of struct_resnet20_a (seeds 0-2) and of
    # struct_resnet20_b (seed 0), then fine-tunes 5 epochs at lr 0.01 (cosine); evaluated like medium.
    "medium_compare": dict(dataset="cifar10", seeds=[0, 1, 2], jobs=2, threads=1, results="results/medium",
                           overrides=[f"trainer.max_epochs={COMPARE_EPOCHS}", f"optim.lr={COMPARE_LR}",
                                      "model.channels_last=true", "trainer.progress_bar=simple",
                                      *_holdout(45_000, 50_000)],
                           runs=[(f"{m}_{t}", f"compress/{m}_{t}",
                                  ["init_from=medium/resnet20", *(["compare_lambda"] if m == "structured" else []),
                                   *(["seeds=0"] if t == "b" else [])])
                                 for t in ("a", "b") for m in COMPARE_METHODS]),
    # Does the gap close with training? (issue: gap against training length) The medium recipe at 30
    # and 60 epochs (cosine over each run's own length), per-epoch monitoring on the first 1,000
    # images of the primary set (the final figures on all 5,000). Listed pair by pair (dense and A of
    # one seed and length side by side), so that each pair finishes together. fp32: measured fastest
    # here (`python -m experiments.throughput`: bf16 autocast 0.08-0.10x, torch.compile 0.73-1.18x).
    "long": dict(dataset="cifar10", jobs=2, threads=1, results="results/long",
                 overrides=["model.channels_last=true", "trainer.progress_bar=simple", *_holdout(45_000, 50_000),
                            "eval.robustness=true", "+data.val_subset=1000"],
                 runs=[(f"{m}_ep{e}", m, [f"trainer.max_epochs={e}", f"tag=_ep{e}", f"seeds={k}",
                                          *(["lambda"] if m != "resnet20" else [])])
                       for e, k, m in [(30, 0, "resnet20"), (30, 0, "struct_resnet20_a"),
                                       (30, 1, "resnet20"), (30, 1, "struct_resnet20_a"),
                                       (30, 2, "resnet20"), (30, 2, "struct_resnet20_a"),
                                       (30, 0, "struct_resnet20_b"), (60, 0, "struct_resnet20_b"),
                                       (60, 0, "resnet20"), (60, 0, "struct_resnet20_a"),
                                       (60, 1, "resnet20"), (60, 1, "struct_resnet20_a")]]),
    "smoke": dict(dataset="cifar10", models=["resnet20", "struct_resnet20_a"], seeds=[0],
                  overrides=["trainer.max_epochs=1", "trainer.progress_bar=none", "data.train_subset=512",
                             "data.test_subset=256", "data.batch_size=64", "structure.bn_recalib_batches=2"]),
    "imagenet": dict(dataset="imagenet", seeds=[0], overrides=[], models=_variants(
        "resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b0", "efficientnet_b1")),
    "cityscapes": dict(dataset="cityscapes", seeds=[0], overrides=[], models=_variants("hrnetv2_w18_small_v2_seg")),
}


class ProfileError(ValueError):
    """A profile cannot run as asked (e.g. its lambda has not been chosen yet)."""


def _collect_root(profile: str) -> Path:
    return Path(PROFILES[profile].get("results", f"results/{profile}")) / "runs"


def init_sources() -> set[tuple[str, str]]:
    """(profile, label) of the runs another profile starts from (``init_from=<profile>/<label>``):
    their ``deploy.pt`` is collected with their logs, so that the runs built on them can start
    from the committed file on another machine (a dense ResNet-20 deploy file is about 1 MB)."""
    return {tuple(item.removeprefix("init_from=").split("/", 1)) for spec in PROFILES.values()
            for _, _, extra in spec.get("runs") or [] for item in extra if item.startswith("init_from=")}


def _init_file(runs: Path, init: str, seed: int) -> Path:
    """The deploy.pt a run starts from: the source run's own under `runs`, else the one collected
    with its logs (results/<profile>/runs/<label>/seed<k>), else the former (reported missing)."""
    own = runs / init / f"seed{seed}" / "deploy.pt"
    profile, label = init.split("/", 1)
    collected = _collect_root(profile) / label / f"seed{seed}" / "deploy.pt"
    return collected if not own.exists() and collected.exists() else own


def runs_of(profile: str, runs: Path = Path("runs")) -> list[tuple[str, str, int, list[str]]]:
    """(label, experiment, seed, overrides) of every run of `profile`, in order. An item
    ``init_from=<profile>/<label>`` of a run starts it from that run's deploy.pt (same seed) under
    `runs`, or from the one collected with that run's logs (:func:`init_sources`)."""
    spec = PROFILES[profile]
    out = []
    for label, exp, extra in spec.get("runs") or [(m, m, []) for m in spec["models"]]:
        seeds = spec.get("seeds", [0])
        overrides, init = [], None
        for item in extra:
            if item.startswith("seeds="):
                seeds = [int(v) for v in item.removeprefix("seeds=").split(",")]
            elif item.startswith("init_from="):
                init = item.removeprefix("init_from=")
            elif item == "compare_lambda":
                overrides += [f"structure.lam={COMPARE_LAMBDA}", f"structure.bn_recalib={str(MEDIUM_BN_RECALIB).lower()}"]
            elif item == "lambda":
                overrides += [f"structure.lam={MEDIUM_LAMBDA}" if MEDIUM_LAMBDA is not None else "structure.lam=?",
                              f"structure.bn_recalib={str(MEDIUM_BN_RECALIB).lower()}"]
            else:
                overrides.append(item)
        for seed in seeds:
            start = [f"model.init_from={_init_file(runs, init, seed)}"] if init else []
            out.append((label, exp, seed, overrides + start))
    return out


def commands(profile: str, data: str, runs: Path, extra: list[str], only: list[str] | None = None) -> list[list[str]]:
    spec = PROFILES[profile]
    cmds = []
    for label, exp, seed, overrides in runs_of(profile, runs):
        if only and label not in only:
            continue
        run_dir = runs / profile / label / f"seed{seed}"
        cmds.append([sys.executable, "-m", "src.train", f"+exp={spec['dataset']}/{exp}", f"seed={seed}",
                     f"profile={profile}", f"data.root={data}", f"hydra.run.dir={run_dir}",
                     *spec["overrides"], *overrides, *extra])
    return cmds


def collect(run_dir: Path, dest: Path, deploy: bool = True) -> list[Path]:
    """Copy a finished run's logs (RUN_LOGS that exist) and its deploy.pt (every run keeps its
    trained model beside its logs, so later evaluations need no retraining; about 1 MB for a
    ResNet-20) into `dest`, and drop the run's stash there (:func:`stash`); returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RUN_LOGS + (("deploy.pt",) if deploy else ()):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, dest / name)
            written.append(dest / name)
    if (dest / INFLIGHT).is_dir():
        shutil.rmtree(dest / INFLIGHT)
    return written


# An unfinished run's state, kept beside its logs' folder so that a run longer than one working
# session survives a machine that does not keep runs/ (commit the folder; the next session
# restores it and resumes). Removed when the run finishes and is collected.
INFLIGHT = "inflight"
STASHED = ("checkpoints/last.ckpt", "code.json", "config.yaml", "overrides.yaml", "metrics.csv")


def stash(run_dir: Path, dest: Path) -> list[Path] | None:
    """Copy an unfinished run's resume state (:data:`STASHED`) into ``dest/inflight``; None when
    there is nothing to stash (no checkpoint, or the run has finished). The checkpoint copy is
    read back (torch.load) so that a file caught mid-write is never kept."""
    ckpt = run_dir / STASHED[0]
    if (run_dir / "summary.json").exists() or not ckpt.exists():
        return None
    import torch

    out = dest / INFLIGHT
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        shutil.copy2(ckpt, out / "last.ckpt")
        try:
            torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
            break
        except Exception:  # written while we copied: try again
            time.sleep(2)
    else:
        raise RuntimeError(f"{ckpt} could not be copied whole (it kept changing); stash again")
    written = [out / "last.ckpt"]
    for name in STASHED[1:]:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / name)
            written.append(out / name)
    return written


def restore(dest: Path, run_dir: Path) -> bool:
    """Put a stashed run state (``dest/inflight``) back into `run_dir` when that directory holds no
    checkpoint and no summary; True when restored (the run then resumes from it)."""
    src = dest / INFLIGHT
    if not (src / "last.ckpt").exists() or (run_dir / STASHED[0]).exists() or (run_dir / "summary.json").exists():
        return False
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "last.ckpt", run_dir / STASHED[0])
    for name in STASHED[1:]:
        if (src / name).exists():
            shutil.copy2(src / name, run_dir / name)
    return True


def _run_dir(cmd: list[str]) -> Path:
    return Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])


def _launch(cmd: list[str], threads: int | None, quiet_log: Path | None) -> subprocess.Popen:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if quiet_log is None:
        return subprocess.Popen(cmd, env=env)
    quiet_log.parent.mkdir(parents=True, exist_ok=True)
    with open(quiet_log, "ab") as f:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full", help="which set of runs (default: full)")
    ap.add_argument("--data", required=True,
                    help="dataset root (CIFAR-10: npz folder or torchvision copy; fetched there when absent and online)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="runs go to <runs>/<profile>/<label>/seed<k>")
    ap.add_argument("--collect", type=Path, default=None, metavar="DIR",
                    help="copy each finished run's logs to DIR/<label>/seed<k> (default: results/<profile>/runs)")
    ap.add_argument("--only", default=None, metavar="LABELS",
                    help="comma-separated run labels (e.g. resnet20,resnet56): only these runs of the profile")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs side by side (default: the profile's, else 1); each run's output then goes to "
                         "<runs>/<profile>/<label>/seed<k>.out")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (OMP_NUM_THREADS; default: the profile's, else torch's default)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run even though the code has uncommitted changes and the logs are collected into "
                         "results/ (their summaries then name a -dirty commit)")
    ap.add_argument("--rerun-collected", action="store_true",
                    help="also run the runs whose logs are already collected (e.g. committed in results/); "
                         "by default they are skipped, since they are finished runs")
    ap.add_argument("--stash", action="store_true",
                    help="copy every unfinished run's resume state (last checkpoint, code.json, config, history) "
                         "to <collect dir>/<label>/seed<k>/inflight and exit (commit it: the next session, on a "
                         "machine without this runs/, restores it and resumes); safe while the runs go on")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args(argv)
    spec = PROFILES[args.profile]
    only = [o for o in args.only.split(",") if o] if args.only else None
    labels = {label for label, *_ in runs_of(args.profile)}
    if only and set(only) - labels:
        ap.error(f"--only {','.join(sorted(set(only) - labels))}: not a run of profile {args.profile} "
                 f"(its runs: {', '.join(sorted(labels))})")
    cmds = commands(args.profile, args.data, args.runs, args.extra, only)
    pending = [c for c in cmds if "structure.lam=?" in c]
    if pending and not args.dry_run:
        names = sorted({str(_run_dir(c).parent.name) for c in pending})
        print(f"reproduce: the {args.profile} profile's lambda is not chosen yet (MEDIUM_LAMBDA in "
              f"experiments/reproduce.py): run PROFILE=medium_sweep, set it from results/medium/sweep/cifar10.md, "
              f"commit, and run again. Until then the runs of {', '.join(names)} are left out.", file=sys.stderr)
        cmds = [c for c in cmds if c not in pending]
    missing = [c for c in cmds if any(a.startswith("model.init_from=") and not Path(a.split("=", 1)[1]).exists()
                                      for a in c)]
    if missing and not args.dry_run:
        paths = [next(a.split("=", 1)[1] for a in c if a.startswith("model.init_from=")) for c in missing]
        print(f"reproduce: {len(missing)} run(s) of {args.profile} start from trained runs that are not there yet "
              f"({', '.join(sorted(set(paths)))}; a source run's deploy.pt is looked for in its run directory, "
              f"then beside its logs in results/): run the profile that makes them first (PROFILE=medium; a "
              f"source run whose logs are committed without its deploy.pt runs again with `--only <label> "
              f"--rerun-collected`); those runs are left out.", file=sys.stderr)
        cmds = [c for c in cmds if c not in missing]
        pending = pending + missing
    jobs = max(1, args.jobs or spec.get("jobs", 1))
    threads = args.threads or spec.get("threads")
    collect_root = args.collect or _collect_root(args.profile)

    def dest_of(cmd: list[str]) -> Path:  # where a run's logs are collected
        return collect_root / _run_dir(cmd).relative_to(args.runs / args.profile)

    if args.stash:
        n = 0
        for c in cmds:
            written = stash(_run_dir(c), dest_of(c))
            if written:
                n += 1
                print(f"stashed {_run_dir(c)} -> {written[0].parent}")
        print(f"{n} unfinished run(s) stashed" + (" (commit them: git add -f <dir>/inflight)" if n else ""))
        return
    for c in cmds:
        if restore(dest_of(c), _run_dir(c)):
            print(f"reproduce: restored the stashed state of {_run_dir(c)} from {dest_of(c) / INFLIGHT}; it resumes",
                  file=sys.stderr)
    done = [c for c in cmds if not (_run_dir(c) / "summary.json").exists() and (dest_of(c) / "summary.json").exists()]
    if done and not args.rerun_collected:
        # finished on another machine or in an earlier clone: their committed logs are the result
        names = [str(_run_dir(c).relative_to(args.runs / args.profile)) for c in done]
        print(f"reproduce: {len(done)} run(s) of {args.profile} already have their logs in {collect_root} "
              f"({', '.join(names)}): skipped (--rerun-collected runs them again and replaces those logs).",
              file=sys.stderr)
        cmds = [c for c in cmds if c not in done]
    t0 = time.time()
    if args.dry_run:
        for i, cmd in enumerate(cmds, 1):
            print(f"[{i}/{len(cmds)}] {' '.join(cmd[2:])}", flush=True)
        return
    if cmds:  # hours of runs whose summaries could not go into results/: refused before the first one
        from src.provenance import DirtyTreeError, check_results_dir

        try:
            check_results_dir(collect_root, args.allow_dirty)
        except DirtyTreeError as e:
            print(f"reproduce: {e} (here: --allow-dirty, or `make ... REPRODUCE_ARGS=--allow-dirty`). "
                  f"No run was started.", file=sys.stderr)
            sys.exit(2)
    queue = list(enumerate(cmds, 1))
    running: dict[int, tuple[subprocess.Popen, list[str], float]] = {}
    failed: tuple[int, int, Path] | None = None
    while queue or running:
        while queue and len(running) < jobs and failed is None:
            i, cmd = queue.pop(0)
            log_file = _run_dir(cmd).with_suffix(".out") if jobs > 1 else None
            print(f"[{i}/{len(cmds)}] {' '.join(cmd[2:])}", flush=True)
            running[i] = (_launch(cmd, threads, log_file), cmd, time.time())
            if log_file:
                print(f"[{i}/{len(cmds)}] started ({threads or 'default'} thread(s)); output: {log_file}", flush=True)
        if not running:
            break
        time.sleep(0.2 if jobs == 1 else 5)
        for i, (proc, cmd, t_start) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[i]
            run_dir = _run_dir(cmd)
            if jobs > 1:  # the end of the run's own output: its result, or its one-line error
                tail = run_dir.with_suffix(".out").read_text(errors="replace").replace("\r", "\n").splitlines()[-8:]
                print("\n".join(f"[{i}/{len(cmds)}]   {line}" for line in tail if line.strip()), flush=True)
            if code:
                print(f"reproduce: run {i} of {len(cmds)} failed (exit status {code}); its log: {run_dir}/train.log"
                      + (f", its output: {run_dir.with_suffix('.out')}" if jobs > 1 else "")
                      + ". Fix the cause and run the same command again: finished runs are skipped.", file=sys.stderr)
                failed = failed or (i, code, run_dir)
                continue
            dest = dest_of(cmd)
            collect(run_dir, dest)
            print(f"[{i}/{len(cmds)}] done in {(time.time() - t_start) / 60:.1f} min; logs copied to {dest}", flush=True)
    if failed:
        sys.exit(failed[1])
    print(f"{len(cmds)} runs, {(time.time() - t0) / 60:.1f} min")
    if pending:
        sys.exit(3)


if __name__ == "__main__":
    main()
