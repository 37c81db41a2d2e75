"""The reproductions: ``make reproduce-cifar [PROFILE=quick|full|...]``, ``make reproduce-imagenet
DATA=...``, ``make reproduce-cityscapes DATA=...``.

A profile is a set of runs, described by ``conf/profiles/<name>.yaml`` (which experiments, seeds and
overrides; conf/profiles/README.md): quick (ResNet-20 dense / A / B, 4 epochs: a 2-core CPU's main
job), full (the paper's CIFAR-10 recipe: GPU), medium_sweep / medium / medium_gap / medium_compare /
long (the CPU reference and its follow-ups), smoke (tests), imagenet, cityscapes.

Each run is ``python -m src.train +exp=<dataset>/<exp> ...`` in ``<runs>/<profile>/<label>/seed<k>``;
finished runs are skipped and killed ones resume, so the command can simply be re-run. When every
run has finished, the tables of the profile's runs are written to ``<runs>/<profile>/tables``.
Nothing is written outside ``<runs>`` unless asked: ``--collect`` (the maintainers' mode, ``make
reproduce-cifar COLLECT=1``) copies each finished run's logs (summary.json, config.yaml,
overrides.yaml, metrics.csv: no checkpoints) and its trained model (deploy.pt) into ``--results``
(default ``results/<profile>/runs``, what ``make tables`` reads: committed, they regenerate the
committed tables byte for byte), and skips the runs whose logs are already there (finished on
another machine) unless ``--rerun-collected``; into results/ it runs only from committed code
(``--allow-dirty`` otherwise). A killed run resumes only on the training code it started with
(src/train.py: check_code_unchanged). ``--stash`` keeps the unfinished runs' resume state beside their
logs (``<results>/<label>/seed<k>/inflight``, to commit) for a machine that does not keep
``runs/``; the next invocation restores it and the runs resume. Runs that start from another
profile's trained model (``init_from``) take it from ``<runs>``, else from the deploy.pt committed
beside that run's logs in results/.

Before any run: the data set is looked for (CIFAR-10 is fetched when absent and online; otherwise one
message says where it was looked for and how to get it, exit status 2), and a GPU profile (full,
imagenet, cityscapes) on a machine without a GPU is refused with an estimate of its time here
(``--force-cpu`` runs it anyway). The first run that fails stops the reproduction: its one-line error
(from src.train) is followed by which run failed and where its log is, and the exit status is that
run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

RUN_LOGS = ("summary.json", "config.yaml", "overrides.yaml", "metrics.csv")
ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = ROOT / "conf" / "profiles"
# the keys a profile file may hold, and a run of its `runs` list (conf/profiles/README.md)
PROFILE_KEYS = {"about", "dataset", "gpu", "seeds", "jobs", "threads", "results", "overrides", "models", "runs"}
RUN_KEYS = {"label", "exp", "seeds", "init_from", "overrides"}


class ProfileError(ValueError):
    """A profile cannot run as asked (e.g. its lambda has not been chosen yet), or its file is malformed."""


def _read_yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _read_profiles() -> dict[str, dict]:
    profiles = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        if path.stem.startswith("_"):
            continue
        spec = _read_yaml(path)
        bad = sorted(set(spec) - PROFILE_KEYS) + sorted(
            f"runs[{i}].{k}" for i, run in enumerate(spec.get("runs") or []) for k in set(run) - RUN_KEYS)
        if bad or ("models" in spec) == ("runs" in spec) or "dataset" not in spec:
            raise ProfileError(f"{path}: unknown key(s) {', '.join(bad)}" if bad else
                               f"{path}: needs `dataset` and one of `models` / `runs`")
        profiles[path.stem] = spec
    return profiles


# Values one profile chose and others use (`${chosen.<name>}` in a profile file).
CHOSEN: dict = _read_yaml(PROFILE_DIR / "_chosen.yaml")
# name -> the profile file as written (interpolations unresolved); profile_spec() resolves one.
PROFILES: dict[str, dict] = _read_profiles()


def _cli_value(v) -> str:
    """A chosen value as the command line spells it (None: not chosen yet, "?")."""
    return "?" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def profile_spec(profile: str) -> dict:
    """The profile's file with the chosen values (CHOSEN) filled in."""
    cfg = OmegaConf.create({**PROFILES[profile], "chosen": {k: _cli_value(v) for k, v in CHOSEN.items()}})
    spec = OmegaConf.to_container(cfg, resolve=True)
    del spec["chosen"]
    return spec


def _collect_root(profile: str) -> Path:
    return Path(PROFILES[profile].get("results", f"results/{profile}")) / "runs"


def init_sources() -> set[tuple[str, str]]:
    """(profile, label) of the runs another profile starts from (``init_from: <profile>/<label>``):
    their ``deploy.pt`` is collected with their logs, so that the runs built on them can start
    from the committed file on another machine (a dense ResNet-20 deploy file is about 1 MB)."""
    return {tuple(run["init_from"].split("/", 1)) for spec in PROFILES.values()
            for run in spec.get("runs") or [] if run.get("init_from")}


def _init_file(runs: Path, init: str, seed: int) -> Path:
    """The deploy.pt a run starts from: the source run's own under `runs`, else the one collected
    with its logs (results/<profile>/runs/<label>/seed<k>), else the former (reported missing)."""
    own = runs / init / f"seed{seed}" / "deploy.pt"
    profile, label = init.split("/", 1)
    collected = _collect_root(profile) / label / f"seed{seed}" / "deploy.pt"
    return collected if not own.exists() and collected.exists() else own


def runs_of(profile: str, runs: Path = Path("runs")) -> list[tuple[str, str, int, list[str]]]:
    """(label, experiment, seed, overrides) of every run of `profile`, in order. A run with
    ``init_from: <profile>/<label>`` starts from that run's deploy.pt (same seed) under `runs`, or
    from the one collected with that run's logs (:func:`init_sources`)."""
    spec = profile_spec(profile)
    out = []
    for run in spec.get("runs") or [{"label": m, "exp": m} for m in spec["models"]]:
        overrides, init = list(run.get("overrides") or []), run.get("init_from")
        for seed in run.get("seeds", spec.get("seeds", [0])):
            start = [f"model.init_from={_init_file(runs, init, seed)}"] if init else []
            out.append((run["label"], run["exp"], seed, overrides + start))
    return out


def commands(profile: str, data: str, runs: Path, extra: list[str], only: list[str] | None = None) -> list[list[str]]:
    spec = profile_spec(profile)
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


def _data_problem(dataset: str, data: str, extra: list[str]) -> str | None:
    """None when the data set is there (CIFAR-10: fetched into `data` when absent, as src.train would,
    once before the runs instead of by each); else the one message that says where it was looked for
    and how to get it."""
    given = dict(a.split("=", 1) for a in extra if a.startswith(("data.root=", "data.url=", "data.md5=", "data.download=")))
    root = Path(given.get("data.root", data)).expanduser()
    if dataset != "cifar10":
        return None if root.is_dir() else (f"no {dataset} data at {root.resolve()}: point DATA=/path (or --data) at "
                                           f"the folder that holds it (conf/data/{dataset}.yaml says what it holds)")
    if (root / "cifar10_train.npz").exists() or (root / "cifar10_test.npz").exists() or (root / "cifar-10-batches-py").is_dir():
        return None  # (an incomplete folder is reported by the first run, naming the file)
    from src.data.cifar import CIFAR10_MD5, CIFAR10_URL, download_cifar10, load_cifar10
    from src.data.errors import DataRootError

    try:
        if given.get("data.download", "auto").lower() == "false":
            load_cifar10(root, download="false")
        else:
            download_cifar10(root, given.get("data.url", CIFAR10_URL), given.get("data.md5", CIFAR10_MD5))
    except DataRootError as e:
        return str(e)
    return None


def _train_images_per_s(model: str = "resnet20", batch: int = 32, steps: int = 3) -> float:
    """Training throughput of `model` on this machine's CPU (forward, backward, SGD step on random
    CIFAR-sized images, fp32, torch's default threads): its fastest of `steps` steps after a
    warm-up step (the least disturbed by whatever else the machine runs)."""
    import torch

    from src.models import create_model

    net = create_model(model, num_classes=10).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / min(times[1:])


def _run_shape(cmd: list[str]) -> tuple[str, int, int]:
    """(model name, epochs, training images per epoch) of a CIFAR-10 run command, composed as src.train
    would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [a for a in cmd[3:] if not a.startswith(("hydra.", "data.root=", "profile="))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    images = cfg.data.get("train_subset") or 50_000
    return str(cfg.model.name) + ("_direct" if cfg.structure.route == "direct" else ""), int(cfg.trainer.max_epochs), int(images)


def cpu_estimate(cmds: list[list[str]], images_per_s: float) -> tuple[float, str]:
    """Hours the runs `cmds` (CIFAR-10) would train on this CPU, from the measured ResNet-20
    throughput `images_per_s`, each model scaled by its multiplies per image (the full kernels its
    training computes, as many as its dense model's; the direct route: the decomposed ones); and
    the sum that gives it."""
    import re

    from src.models import create_model
    from src.structured import complexity

    def mults(name: str) -> int:
        direct = name.endswith("_direct")
        name = name.removesuffix("_direct") if direct else re.sub(r"^struct_(.*)_[ab]$", r"\1", name)
        if (name, direct) not in cache:
            cost = complexity(create_model(name, num_classes=10), (3, 32, 32))
            cache[name, direct] = cost.mults_decomposed if direct else cost.mults
        return cache[name, direct]

    cache: dict[tuple[str, bool], int] = {}
    shapes: dict[tuple[str, ...], tuple[str, int, int]] = {}  # the runs of one setting, seeds aside
    hours, epochs, images = 0.0, set(), set()
    for cmd in cmds:
        key = tuple(a for a in cmd[3:] if not a.startswith(("seed=", "hydra.run.dir=")))
        name, n_epochs, n_images = shapes[key] if key in shapes else shapes.setdefault(key, _run_shape(cmd))
        hours += n_epochs * n_images * mults(name) / mults("resnet20") / images_per_s / 3600
        epochs.add(n_epochs)
        images.add(n_images)
    shape = (f"{len(cmds)} runs x {'/'.join(map(str, sorted(epochs)))} epochs x "
             f"{'/'.join(f'{n:,}' for n in sorted(images))} images")
    return hours, shape


def _duration(hours: float) -> str:
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.0f} days"


def gpu_refusal(profile: str, cmds: list[list[str]]) -> str | None:
    """None when `profile` may run here (it needs no GPU, or there is one); else the message that
    refuses it: what it is, its estimated time on this machine, what to run instead."""
    if not profile_spec(profile).get("gpu"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    spec = profile_spec(profile)
    if spec["dataset"] == "cifar10":
        ips = _train_images_per_s()
        hours, shape = cpu_estimate(cmds, ips)
        time_here = (f"its {shape} would take about {_duration(hours)} here (ResNet-20 trains at {ips:.0f} images/s "
                     f"on this CPU's {torch.get_num_threads()} threads, measured now; the other models scaled by their "
                     f"multiplies)")
    else:
        time_here = f"its {len(cmds)} runs would take weeks on this CPU"
    return (f"PROFILE={profile} is {spec.get('about', 'a GPU recipe')}, and this machine has no GPU: {time_here}. "
            f"On a CPU, run `make reproduce-cifar PROFILE=quick` (ResNet-20 dense / A / B, 25-50 min on 2 cores; "
            f"PROFILE=medium_sweep then PROFILE=medium: the CPU reference, about 20 h). To run {profile} here "
            f"anyway: FORCE=1 (make) or --force-cpu.")


def write_user_tables(runs_dir: Path) -> int:
    """The tables of the runs under `runs_dir` (<runs>/<profile>), written into `runs_dir`/tables and
    printed; the exit status of src.tables."""
    out = runs_dir / "tables"
    print(f"your tables, from your runs in {runs_dir} (the committed ones, from the maintainers' runs, are in "
          f"results/):", flush=True)
    return subprocess.run([sys.executable, "-m", "src.tables", "--runs", str(runs_dir), "--out", str(out)]).returncode


def main(argv=None) -> None:
    profiles = "\n".join(f"  {name:15s} {spec.get('about', '')}" for name, spec in PROFILES.items())
    ap = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0],
                                 epilog=f"profiles (conf/profiles/<name>.yaml):\n{profiles}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full", metavar="NAME",
                    help="which set of runs (default: full, the paper's GPU recipe; below)")
    ap.add_argument("--data", required=True,
                    help="dataset root (CIFAR-10: npz folder or torchvision copy; fetched there when absent and online)")
    ap.add_argument("--runs", type=Path, default=Path("runs"),
                    help="runs go to <runs>/<profile>/<label>/seed<k>, their tables to <runs>/<profile>/tables")
    ap.add_argument("--collect", action="store_true",
                    help="also copy each finished run's logs and deploy.pt into --results (the committed logs, what "
                         "`make tables` reads), skipping the runs whose logs are already there (the maintainers' mode; "
                         "refused on uncommitted code unless --allow-dirty)")
    ap.add_argument("--results", type=Path, default=None, metavar="DIR",
                    help="the collected logs' folder: DIR/<label>/seed<k> (default: results/<profile>/runs); also where "
                         "--stash keeps unfinished runs and where their stashed state is restored from")
    ap.add_argument("--only", default=None, metavar="LABELS",
                    help="comma-separated run labels (e.g. resnet20,resnet56): only these runs of the profile")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs side by side (default: the profile's, else 1); each run's output then goes to "
                         "<runs>/<profile>/<label>/seed<k>.out")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (OMP_NUM_THREADS; default: the profile's, else torch's default)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--force-cpu", action="store_true",
                    help="run a GPU profile (full, imagenet, cityscapes) on a machine without a GPU (refused otherwise, "
                         "with an estimate of its time here)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="with --collect: run even though the code has uncommitted changes (the collected summaries "
                         "then name a -dirty commit)")
    ap.add_argument("--rerun-collected", action="store_true",
                    help="with --collect: also run the runs whose logs are already collected (e.g. committed in "
                         "results/), replacing those logs; by default they are skipped, since they are finished runs")
    ap.add_argument("--stash", action="store_true",
                    help="copy every unfinished run's resume state (last checkpoint, code.json, config, history) "
                         "to <results>/<label>/seed<k>/inflight and exit (commit it: the next session, on a "
                         "machine without this runs/, restores it and resumes); safe while the runs go on")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args(argv)
    if args.rerun_collected and not args.collect:
        ap.error("--rerun-collected goes with --collect (without it, no run is skipped for logs in results/)")
    spec = profile_spec(args.profile)
    only = [o for o in args.only.split(",") if o] if args.only else None
    labels = {label for label, *_ in runs_of(args.profile)}
    if only and set(only) - labels:
        ap.error(f"--only {','.join(sorted(set(only) - labels))}: not a run of profile {args.profile} "
                 f"(its runs: {', '.join(sorted(labels))})")
    cmds = commands(args.profile, args.data, args.runs, args.extra, only)
    pending = [c for c in cmds if "structure.lam=?" in c]
    if pending and not args.dry_run:
        names = sorted({str(_run_dir(c).parent.name) for c in pending})
        print(f"reproduce: the {args.profile} profile's lambda is not chosen yet (medium_lambda in "
              f"conf/profiles/_chosen.yaml): run PROFILE=medium_sweep, set it from results/medium/sweep/cifar10.md, "
              f"commit, and run again. Until then the runs of {', '.join(names)} are left out.", file=sys.stderr)
        cmds = [c for c in cmds if c not in pending]
    missing = [c for c in cmds if any(a.startswith("model.init_from=") and not Path(a.split("=", 1)[1]).exists()
                                      for a in c)]
    if missing and not args.dry_run:
        paths = [next(a.split("=", 1)[1] for a in c if a.startswith("model.init_from=")) for c in missing]
        print(f"reproduce: {len(missing)} run(s) of {args.profile} start from trained runs that are not there yet "
              f"({', '.join(sorted(set(paths)))}; a source run's deploy.pt is looked for in its run directory, "
              f"then beside its logs in results/): run the profile that makes them first (PROFILE=medium; a "
              f"source run whose logs are committed without its deploy.pt runs again with `--collect --only <label> "
              f"--rerun-collected`); those runs are left out.", file=sys.stderr)
        cmds = [c for c in cmds if c not in missing]
        pending = pending + missing
    jobs = max(1, args.jobs or spec.get("jobs", 1))
    threads = args.threads or spec.get("threads")
    results_root = args.results or _collect_root(args.profile)

    def dest_of(cmd: list[str]) -> Path:  # where a run's logs are collected (and its stash kept)
        return results_root / _run_dir(cmd).relative_to(args.runs / args.profile)

    if args.stash:
        n = 0
        for c in cmds:
            written = stash(_run_dir(c), dest_of(c))
            if written:
                n += 1
                print(f"stashed {_run_dir(c)} -> {written[0].parent}")
        print(f"{n} unfinished run(s) stashed" + (" (commit them: git add -f <dir>/inflight)" if n else ""))
        return
    if not args.dry_run:
        for c in cmds:
            if restore(dest_of(c), _run_dir(c)):
                print(f"reproduce: restored the stashed state of {_run_dir(c)} from {dest_of(c) / INFLIGHT}; "
                      f"it resumes", file=sys.stderr)
    done = [c for c in cmds if not (_run_dir(c) / "summary.json").exists() and (dest_of(c) / "summary.json").exists()]
    if args.collect and done and not args.rerun_collected:
        # finished on another machine or in an earlier clone: their committed logs are the result
        names = [str(_run_dir(c).relative_to(args.runs / args.profile)) for c in done]
        print(f"reproduce: {len(done)} run(s) of {args.profile} already have their logs in {results_root} "
              f"({', '.join(names)}): skipped (--rerun-collected runs them again and replaces those logs).",
              file=sys.stderr)
        cmds = [c for c in cmds if c not in done]
    if args.dry_run:
        for i, cmd in enumerate(cmds, 1):
            print(f"[{i}/{len(cmds)}] {' '.join(cmd[2:])}", flush=True)
        return
    if cmds:  # refusals that need no run: before the first one
        problem = None if args.force_cpu else gpu_refusal(args.profile, cmds)
        problem = problem or _data_problem(spec["dataset"], args.data, args.extra)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    if cmds and args.collect:  # hours of runs whose summaries could not go into results/
        from src.provenance import DirtyTreeError, check_results_dir

        try:
            check_results_dir(results_root, args.allow_dirty)
        except DirtyTreeError as e:
            print(f"reproduce: {e} (here: --allow-dirty, or `make ... REPRODUCE_ARGS=--allow-dirty`). "
                  f"No run was started.", file=sys.stderr)
            sys.exit(2)
    t0 = time.time()
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
            where = f"{run_dir}"
            if args.collect:
                dest = dest_of(cmd)
                collect(run_dir, dest)
                where += f"; logs copied to {dest}"
            print(f"[{i}/{len(cmds)}] done in {(time.time() - t_start) / 60:.1f} min: {where}", flush=True)
    if failed:
        sys.exit(failed[1])
    print(f"{len(cmds)} runs, {(time.time() - t0) / 60:.1f} min")
    if cmds and write_user_tables(args.runs / args.profile):
        sys.exit(1)
    if pending:
        sys.exit(3)


if __name__ == "__main__":
    main()
