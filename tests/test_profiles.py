"""The reproduction profiles live in conf/profiles/ (read by experiments/reproduce.py): their
commands are exactly those the Python dicts they replaced generated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import ROOT

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "reproduce_commands.json").read_text())


def _argv(cmds: list[list[str]]) -> list[list[str]]:
    return [c[1:] for c in cmds]  # without sys.executable


def test_every_profile_generates_the_commands_it_always_did(tmp_path, monkeypatch):
    from experiments import reproduce

    monkeypatch.chdir(tmp_path)  # no results/ here: every init_from names the run directory
    assert sorted(reproduce.PROFILES) == sorted(FIXTURE["commands"])
    for profile, expected in FIXTURE["commands"].items():
        assert _argv(reproduce.commands(profile, "data/cifar10", Path("runs"), [])) == expected, profile
    for profile, expected in FIXTURE["extra"].items():
        assert _argv(reproduce.commands(profile, "/d", Path("/tmp/r"), ["x.y=1"])) == expected, profile


def test_the_comparison_starts_from_the_committed_dense_models(monkeypatch):
    from experiments import reproduce

    monkeypatch.chdir(ROOT)
    if not all((ROOT / f"results/medium/runs/resnet20/seed{k}/deploy.pt").exists() for k in range(3)):
        pytest.skip("the committed medium resnet20 deploy files are not in this checkout")
    got = _argv(reproduce.commands("medium_compare", "data/cifar10", Path("runs"), []))
    assert got == FIXTURE["medium_compare_in_repo"]
    assert reproduce.init_sources() == {("medium", "resnet20")}


def test_profile_settings_and_no_recipe_left_in_python():
    from experiments import reproduce

    specs = {p: {k: reproduce.profile_spec(p).get(k) for k in ("dataset", "jobs", "threads", "results")}
             for p in reproduce.PROFILES}
    assert specs["medium"] == {"dataset": "cifar10", "jobs": 2, "threads": 1, "results": "results/medium"}
    assert specs["medium_compare"]["results"] == "results/medium" and specs["long"]["results"] == "results/long"
    assert specs["medium_sweep"]["results"] == "results/medium/sweep"
    assert specs["medium_gap"]["results"] == "results/medium/gap"
    assert specs["quick"] == {"dataset": "cifar10", "jobs": None, "threads": None, "results": None}
    assert {p for p in reproduce.PROFILES if reproduce.profile_spec(p).get("gpu")} == {"full", "imagenet", "cityscapes"}
    source = (ROOT / "experiments" / "reproduce.py").read_text()
    for name in ("MEDIUM_LAMBDA", "COMPARE_LAMBDA", "QUICK_EPOCHS", "struct_resnet20", "trainer.max_epochs="):
        assert name not in source, name


def test_a_malformed_profile_file_is_refused(tmp_path, monkeypatch):
    from experiments import reproduce

    (tmp_path / "_chosen.yaml").write_text("medium_lambda: 0.1\n")
    (tmp_path / "bad.yaml").write_text("dataset: cifar10\nmodels: [resnet20]\nseed: [0]\n")
    monkeypatch.setattr(reproduce, "PROFILE_DIR", tmp_path)
    with pytest.raises(reproduce.ProfileError, match=r"bad.yaml: unknown key\(s\) seed"):
        reproduce._read_profiles()
    (tmp_path / "bad.yaml").write_text("dataset: cifar10\nruns: [{label: a, exp: resnet20, seed: [1]}]\n")
    with pytest.raises(reproduce.ProfileError, match=r"runs\[0\]\.seed"):
        reproduce._read_profiles()
    (tmp_path / "bad.yaml").write_text("dataset: cifar10\n")
    with pytest.raises(reproduce.ProfileError, match="one of `models` / `runs`"):
        reproduce._read_profiles()


def test_profiles_are_not_a_config_group_of_the_profile_key():
    """`profile=quick` (what every run command carries) stays a plain value of src.train's config:
    the profiles' folder is not named like that key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    assert not (ROOT / "conf" / "profile").exists()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+exp=cifar10/resnet20", "profile=quick"])
    assert cfg.profile == "quick" and "about" not in cfg


def test_reproduce_help_lists_the_profiles_without_importing_the_model_zoo():
    import subprocess
    import sys

    code = ("import sys\nfrom experiments import reproduce\ntry:\n    reproduce.main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for name in ("quick", "full", "medium_compare", "the paper's CIFAR-10 GPU recipe", "--collect", "--force-cpu"):
        assert name in out.stdout, name
