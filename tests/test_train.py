"""The training pipeline end to end on CIFAR-10: a generated fixture in both on-disk layouts
always, the real data set in addition where it is present (small subsets, a few steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import src.runs  # noqa: F401  (registers the run_suffix resolver the configs use)
from src.lit.module import read_history
from src.models import create_model, list_models
from src.structured import decompose

from .conftest import ROOT

CONF = ROOT / "conf"

REQUIRED_KEYS = {
    "model", "seed", "epochs", "test_acc_dense", "test_acc_projected", "test_acc_decomposed", "params_dense",
    "params_decomposed", "mults_dense", "mults_decomposed", "adds_dense", "adds_decomposed",
    "structural_residual_final", "lambda", "wall_time_s", "train_images_per_s", "git_sha",
    "test_acc_decomposed_exact_subset", "config_hash", "run_hash", "overrides", "train_time_s",
}

# summary.json's keys in the order the pipeline has always written them (src/summary.py defines them)
SUMMARY_HEAD = ["model", "dataset", "route", "tag", "profile", "config_hash", "run_hash", "overrides", "seed", "epochs",
                "max_epochs", "lambda", "lambda_ramp_epochs", "bn_recalib", "train_subset", "test_subset", "eval_set",
                "train_images", "precision"]
SUMMARY_TAIL = ["params_dense", "params_decomposed", "mults_dense", "mults_decomposed", "adds_dense", "adds_decomposed",
                "adds_decomposed_running", "structural_residual_final", "structural_residual_mean_final", "wall_time_s",
                "train_time_s", "resumed", "train_images_per_s", "device", "world_size", "threads", "torch", "git_sha",
                "git_sha_start"]


def summary_key_order(exact: bool) -> list[str]:
    stages = [k for st in ("dense", "projected_raw", "projected", "decomposed")
              for k in (f"test_acc_{st}", *([f"test_acc_{st}_exact_subset"] if exact else []))]
    return SUMMARY_HEAD + stages + SUMMARY_TAIL + ([] if exact else ["test_acc_decomposed_exact_subset"])


TINY = ["data.train_subset=256", "data.test_subset=256", "data.batch_size=64", "data.eval_batch_size=256",
        "trainer.max_epochs=2", "trainer.progress_bar=none", "structure.bn_recalib_batches=2"]


def compose_cfg(overrides: list[str], run_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(overrides, run_dir):
    from src.train import run

    return run(compose_cfg(overrides, run_dir))


def test_every_experiment_config_composes():
    exps = sorted(p.relative_to(CONF / "exp").with_suffix("").as_posix() for p in (CONF / "exp").rglob("*.yaml"))
    names = set(list_models())
    cifar = {n for n in names if n.startswith(("resnet2", "resnet3", "resnet4", "resnet5", "resnet11",
                                               "struct_resnet2", "struct_resnet3", "struct_resnet4",
                                               "struct_resnet5", "struct_resnet11", "cifar_", "struct_cifar_"))}
    cifar -= {"resnet34", "resnet50", "struct_resnet34_a", "struct_resnet34_b", "struct_resnet50_a", "struct_resnet50_b"}
    assert {e.split("/", 1)[1] for e in exps if e.startswith("cifar10/")} >= cifar
    for exp in exps:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"+exp={exp}"])
        assert cfg.model.name in names, exp
        assert cfg.data.name == exp.split("/")[0], exp
        assert cfg.run_name.startswith(f"{cfg.data.name}/{cfg.model.name}"), exp


def test_cifar_structured_run_end_to_end(tmp_path, cifar_any):
    run_dir = tmp_path / "run"
    s = train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_any}", "logger=wandb", *TINY], run_dir)
    assert REQUIRED_KEYS <= set(s)
    assert s["model"] == "struct_resnet20_a" and s["epochs"] == 2 and s["lambda"] == 2.0
    assert (s["params_dense"], s["params_decomposed"]) == (269_722, 121_242)
    assert s["mults_decomposed"] < 0.5 * s["mults_dense"]
    assert 0 < s["structural_residual_final"] < 1
    # decomposition is exact: same predictions as the projected model, up to float ties
    assert abs(s["test_acc_decomposed"] - s["test_acc_projected"]) <= 100 / 256 + 1e-9
    npz = (cifar_any / "cifar10_test.npz").exists()
    # the npz layouts mark bit-exact test images; torchvision's copy is exact throughout
    assert (s["test_acc_decomposed_exact_subset"] is not None) == npz
    assert json.loads((run_dir / "summary.json").read_text()) == s
    # the schema (src/summary.py) describes exactly what was written, in the order it always was
    from src import summary

    summary.validate(s, "classification")
    assert summary.assemble("classification", dict(s)) == s
    assert list(json.loads((run_dir / "summary.json").read_text())) == summary_key_order(npz)
    history = read_history(run_dir / "metrics.csv")
    assert [r["epoch"] for r in history] == [0, 1]  # one row per epoch
    for key in ("train/structural_loss_epoch", "residual/mean", "residual/max", "val/acc", "train/loss_epoch", "lr"):
        assert all(key in r for r in history), key
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb did not log offline"
    # the deploy file loads on its own, with its preprocessing, into the decomposed architecture
    from src.deploy import load_deploy

    net = load_deploy(run_dir / "deploy.pt")
    assert net.name == "struct_resnet20_a" and net.class_names[0] == "airplane" and net.preprocessing_known
    assert len(net.classify(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))) == 1
    deploy = torch.load(run_dir / "deploy.pt", weights_only=True)
    model = decompose(create_model("struct_resnet20_a"), tol=float("inf"))
    model.load_state_dict(deploy["state_dict"])
    # running the same command again reports the finished run without redoing it
    assert train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_any}", *TINY], run_dir) == s


def test_direct_route_and_dense_baseline(tmp_path, cifar_npz):
    s = train(["+exp=cifar10/struct_resnet56_a_direct", f"data.root={cifar_npz}", "model.name=struct_resnet20_a", *TINY],
              tmp_path / "direct")
    assert s["route"] == "direct" and s["lambda"] == 0.0
    assert s["test_acc_dense"] == s["test_acc_decomposed"]
    assert s["params_decomposed"] == 121_242 and s["structural_residual_final"] == 0.0
    d = train(["+exp=cifar10/resnet20", f"data.root={cifar_npz}", *TINY], tmp_path / "dense")
    assert d["params_dense"] == d["params_decomposed"] == 269_722
    assert d["lambda"] == 0.0  # no structured layer: no structural loss, whatever structure.lam says
    assert d["test_acc_dense"] == d["test_acc_decomposed"]


def test_rmsprop_recipe_with_weight_ema(tmp_path, cifar_npz):
    """The MobileNetV2 / EfficientNet optimizer recipe (TensorFlow's RMSProp, per-step exponential
    decay, weight EMA) through the whole pipeline: the EMA travels in every checkpoint (beside the
    model's weights), and the trained model evaluated at the end is the EMA evaluated during
    training."""
    from timm.optim import RMSpropTF

    from src.lit.module import EMA_KEY

    run_dir = tmp_path / "rms"
    s = train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_npz}", "optim=imagenet_rmsprop_mobilenet",
               "optim.ema_decay=0.9", *TINY], run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt[EMA_KEY] and all(k.startswith("model.") for k in ckpt["state_dict"])
    assert "lr_in_momentum" in ckpt["optimizer_states"][0]["param_groups"][0]  # RMSpropTF's, not torch's RMSprop
    assert "lr_in_momentum" in RMSpropTF([torch.zeros(1, requires_grad=True)]).defaults
    history = read_history(run_dir / "metrics.csv")
    lr = 0.0075 * 64 / 256  # lr_per_256 at batch 64; x0.98 per epoch of 4 steps
    assert [r["lr"] for r in history] == pytest.approx([lr * 0.98, lr * 0.98 ** 2], rel=1e-6)
    assert s["test_acc_dense"] == round(100 * history[-1]["val/acc"], 4)  # the EMA, adopted
    assert s["epochs"] == 2 and s["params_decomposed"] == 121_242


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch, cifar_npz):
    from src.lit.module import ClassificationModule

    original = ClassificationModule.task_loss

    def poisoned(self, out, target):
        loss = original(self, out, target)
        return loss * float("nan") if self.current_epoch >= 1 else loss

    monkeypatch.setattr(ClassificationModule, "task_loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1.*last good checkpoint is kept \(.*last.ckpt\)"):
        train(["+exp=cifar10/struct_resnet20_b", f"data.root={cifar_npz}", *TINY], run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "summary.json").exists()
    assert len(read_history(run_dir / "metrics.csv")) == 1  # the good epoch's row is kept
    assert "FloatingPointError" in (run_dir / "train.log").read_text()  # the error is in the run's log


def test_missing_data_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"(?s)no CIFAR-10 at {tmp_path}/nowhere, and data.download=false .*"
                                                rf"cifar10_train.npz.*CIFAR_ROOT"):
        train(["+exp=cifar10/resnet20", f"data.root={tmp_path}/nowhere", "data.download=false", *TINY], tmp_path / "run")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cifar10_train.npz").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="incomplete: cifar10_test.npz is missing"):
        train(["+exp=cifar10/resnet20", f"data.root={tmp_path}/half", *TINY], tmp_path / "run2")
    (tmp_path / "half" / "cifar10_test.npz").write_bytes(b"garbage")
    with pytest.raises(OSError, match=rf"{tmp_path}/half/cifar10_train.npz is corrupt"):
        train(["+exp=cifar10/resnet20", f"data.root={tmp_path}/half", *TINY], tmp_path / "run3")
    tv = tmp_path / "tv" / "cifar-10-batches-py"
    tv.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=rf"{tv} is incomplete: data_batch_1 is missing"):
        train(["+exp=cifar10/resnet20", f"data.root={tmp_path}/tv", *TINY], tmp_path / "run4")


def _cmd(run_dir: Path, extra: list[str], data: Path) -> list[str]:
    return [sys.executable, "-m", "src.train", "+exp=cifar10/struct_resnet20_a", f"data.root={data}",
            f"hydra.run.dir={run_dir}", *TINY, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _history_values(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in read_history(run_dir / "metrics.csv")]


@pytest.mark.slow
def test_killed_run_resumes_with_its_full_history(tmp_path, cifar_npz):
    """Kill a run after its epoch-1 checkpoint, run the same command again: the result and the
    per-epoch history equal the uninterrupted run's (every epoch exactly once)."""
    extra = ["trainer.max_epochs=4", "data.train_subset=512"]
    full = tmp_path / "full"
    subprocess.run(_cmd(full, extra, cifar_npz), cwd=ROOT, env=_env(), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, extra, cifar_npz), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "epoch001.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    before = [r["epoch"] for r in read_history(killed / "metrics.csv")]
    assert before[:2] == [0, 1] and len(before) <= 3, before
    subprocess.run(_cmd(killed, extra, cifar_npz), cwd=ROOT, env=_env(), check=True, capture_output=True)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert not a["resumed"] and b["resumed"]
    assert b["git_sha_start"] == b["git_sha"]  # resumed on the code it started with (code.json)
    for key in ("test_acc_dense", "test_acc_projected", "test_acc_decomposed", "epochs", "config_hash", "run_hash"):
        assert a[key] == b[key], key
    assert abs(a["structural_residual_final"] - b["structural_residual_final"]) < 1e-6
    ha, hb = _history_values(full), _history_values(killed)
    assert [r["epoch"] for r in ha] == [r["epoch"] for r in hb] == [0, 1, 2, 3]
    for ra, rb in zip(ha, hb):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert abs(ra[k] - rb[k]) <= 1e-6 * max(1.0, abs(ra[k])), (ra["epoch"], k, ra[k], rb[k])


def test_resume_is_refused_on_other_training_code(tmp_path, monkeypatch):
    """A killed run resumes only on the training code it started with: code.json's fingerprint
    (src/ and conf/, reports aside) is compared, and a difference is refused naming the files,
    before anything is written. Runs of older code (no code.json) are not checked."""
    from src import provenance, runs
    from src.train import check_code_unchanged

    now = provenance.code_fingerprint()
    assert "src/pipeline.py" in now and "conf/train.yaml" in now
    assert not any(k.startswith("src/tables/") for k in now) and not any(k.startswith("src/bench/") for k in now)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    check_code_unchanged(run_dir)  # no code.json: an older run, not checked
    (run_dir / "code.json").write_text(json.dumps({"git_sha": "a" * 40, "files": now}))
    check_code_unchanged(run_dir)
    old = {**now, "src/pipeline.py": "0" * 16, "src/gone.py": "1" * 16}
    del old["conf/train.yaml"]
    (run_dir / "code.json").write_text(json.dumps({"git_sha": "b" * 40, "files": old}))
    with pytest.raises(runs.RunDirError) as e:
        check_code_unchanged(run_dir)
    msg = str(e.value)
    for part in ("commit bbbbbbbbbbbb", "differs in 3 file(s)", "changed: src/pipeline.py", "added: conf/train.yaml",
                 "removed: src/gone.py", "git worktree add ../at-bbbbbbb", "Nothing was changed on disk"):
        assert part in msg, part
    (run_dir / "code.json").write_text("{not json")
    with pytest.raises(runs.RunDirError, match="cannot be read"):
        check_code_unchanged(run_dir)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, cifar_npz):
    run_dir = tmp_path / "ddp"
    out = subprocess.run(_cmd(run_dir, ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                        "trainer.max_epochs=1"], cifar_npz),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 1
    assert s["params_decomposed"] == 121_242
    assert [r["epoch"] for r in read_history(run_dir / "metrics.csv")] == [0]


def test_imagenet_and_cityscapes_fixtures_end_to_end(tmp_path):
    from src.data import make_cityscapes_fixture, make_imagenet_fixture

    imagenet = make_imagenet_fixture(tmp_path / "imagenet", num_classes=3, train_per_class=4, val_per_class=2)
    small = ["trainer.max_epochs=1", "trainer.progress_bar=none", "data.batch_size=4", "data.num_workers=0",
             "structure.bn_recalib_batches=1"]
    s = train(["+exp=imagenet/struct_resnet18_a", f"data.root={imagenet}", "data.image_size=32",
               "data.val_resize=36", *small], tmp_path / "in")
    assert s["dataset"] == "imagenet" and s["epochs"] == 1 and s["test_acc_decomposed"] is not None
    assert s["params_decomposed"] < 0.5 * s["params_dense"]
    cityscapes = make_cityscapes_fixture(tmp_path / "cityscapes", train_per_city=2, val_per_city=1, size=(64, 128))
    s = train(["+exp=cityscapes/struct_hrnetv2_w18_small_v2_seg_a", f"data.root={cityscapes}",
               "data.crop_size=[64,128]", *small], tmp_path / "cs")
    assert s["dataset"] == "cityscapes" and 0 <= s["test_miou_decomposed"] <= 100
    assert abs(s["test_miou_decomposed"] - s["test_miou_projected"]) < 1.0
    assert "test_acc_decomposed" not in s


def test_imagenet_missing_root_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/missing"):
        train(["+exp=imagenet/resnet18", f"data.root={tmp_path}/missing", "trainer.progress_bar=none"], tmp_path / "r")


def test_reproduction_profiles_name_existing_experiments():
    from experiments import reproduce

    for profile in reproduce.PROFILES:
        cmds = reproduce.commands(profile, "/data", Path("runs"), [])
        assert cmds
        for cmd in cmds:
            exp = next(a for a in cmd if a.startswith("+exp=")).removeprefix("+exp=")
            assert (CONF / "exp" / f"{exp}.yaml").exists(), exp
            assert f"hydra.run.dir=runs/{profile}/" in " ".join(cmd)
    full = reproduce.commands("full", "/data", Path("runs"), [])
    assert len(full) == (4 * 3 + 1) * 3  # 4 families x dense/A/B + direct ablation, 3 seeds


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=cifar10/struct_resnet56_a", "+launcher=slurm",
                                          "hydra.launcher.partition=gpu"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.partition == "gpu"
