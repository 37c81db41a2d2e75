"""The medium profile's evaluation protocol: a primary evaluation set held out of the (exact)
training images, the official test set beside it, and robustness to generated corruptions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.config_check import ConfigError
from src.data import CIFAR10DataModule
from src.data.corruptions import CORRUPTIONS, corrupt
from src.data.fixtures import make_cifar10_fixture
from src.deploy import load_deploy
from src.pipeline import accuracy

from .test_train import TINY, train


def test_holdout_split_never_trains_on_the_evaluation_images(cifar_npz):
    dm = CIFAR10DataModule(str(cifar_npz), eval_set="holdout", holdout=[800, 1000])
    dm.setup("fit")
    full = CIFAR10DataModule(str(cifar_npz))
    full.setup("fit")
    x, y, exact = dm.eval_arrays("primary")
    assert exact is None and len(x) == 200 and dm.eval_set_name == "train[800:1000]"
    assert (x == full.arrays.train_x[800:1000]).all() and (y == full.arrays.train_y[800:1000]).all()
    assert (dm.arrays.train_x == full.arrays.train_x[:800]).all()  # training: the first 800 only
    ox, oy, oexact = dm.eval_arrays("official")
    assert (ox == full.arrays.test_x).all() and oexact is not None and oexact.sum() == len(ox) // 10
    # the per-epoch validation and final test loaders read the primary set
    batches = list(dm.test_dataloader())
    assert sum(len(b[1]) for b in batches) == 200 and len(batches[0]) == 2
    small = CIFAR10DataModule(str(cifar_npz), eval_set="holdout", holdout=[800, 1000], train_subset=500)
    small.setup()
    assert len(small.arrays.train_x) == 500 and len(small.eval_arrays()[0]) == 200
    # data.val_subset: the per-epoch validation reads the first N primary images, the final test all
    mon = CIFAR10DataModule(str(cifar_npz), eval_set="holdout", holdout=[800, 1000], val_subset=50)
    mon.setup()
    val = list(mon.val_dataloader())
    assert sum(len(b[1]) for b in val) == 50 and (torch.cat([b[1] for b in val]).numpy() == y[:50]).all()
    assert sum(len(b[1]) for b in mon.test_dataloader()) == 200 and len(mon.eval_arrays()[0]) == 200
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 200  # default: all of it
    with pytest.raises(ValueError, match=r"data.val_subset=0: must be a positive integer"):
        CIFAR10DataModule(str(cifar_npz), val_subset=0)
    # the default protocol is unchanged: the official test set is the primary set
    assert full.eval_set_name == "test" and len(full.eval_arrays("primary")[0]) == len(full.arrays.test_x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_set="holdout", holdout=[800, 1000], train_subset=900), "train_subset=900 overlaps"),
    (dict(eval_set="holdout", holdout=None), "data.holdout=None"),
    (dict(eval_set="holdout", holdout=[1000, 800]), r"data.holdout=\[1000, 800\]"),
    (dict(eval_set="val"), "data.eval_set='val'"),
])
def test_bad_holdout_settings_are_refused(cifar_npz, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule(str(cifar_npz), **kwargs)


def test_holdout_past_the_training_set_names_the_size(cifar_npz):
    dm = CIFAR10DataModule(str(cifar_npz), eval_set="holdout", holdout=[900, 1200])
    with pytest.raises(ValueError, match=r"ends after the 1000 training images"):
        dm.setup()


def test_config_check_refuses_overlap_before_any_work(cifar_npz, tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_subset=900: overlaps data.holdout=\[800, 1000\]"):
        train(["+exp=cifar10/resnet20", f"data.root={cifar_npz}", "data.eval_set=holdout", "data.holdout=[800,1000]",
               "data.train_subset=900"], tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_corruptions_are_deterministic_and_change_the_images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for name in CORRUPTIONS:
        a, b = corrupt(x, name), corrupt(x, name)
        assert a.dtype == np.uint8 and a.shape == x.shape and (a == b).all(), name
        assert (a != x).any(), name
    noise = corrupt(x, "noise").astype(float) - x.astype(float)
    interior = (x > 40) & (x < 215)  # away from clipping
    assert abs(noise[interior].std() - 0.05 * 255) < 0.5
    flat = np.full((2, 32, 32, 3), 100, dtype=np.uint8)
    assert (corrupt(flat, "blur") == flat).all()  # a blur leaves a constant image alone
    assert np.abs(corrupt(x, "jpeg50").astype(int) - x).mean() > np.abs(corrupt(x, "jpeg75").astype(int) - x).mean()
    with pytest.raises(ValueError, match="corruption 'fog'"):
        corrupt(x, "fog")
    with pytest.raises(ValueError, match="uint8 images"):
        corrupt(x.astype(np.float32), "blur")


def test_holdout_run_reports_primary_official_and_robustness(cifar_npz, tmp_path):
    """End to end: test_* keys measure the held-out set (recomputed here from deploy.pt), the official
    test set has keys of its own, robustness keys come from the corrupted primary set."""
    run_dir = tmp_path / "r"
    s = train(["+exp=cifar10/struct_resnet20_a", f"data.root={cifar_npz}", "data.eval_set=holdout",
               "data.holdout=[700,1000]", "eval.robustness=true", "+data.val_subset=100",
               *[o for o in TINY if not o.startswith(("data.train_subset", "data.test_subset"))]], run_dir)
    assert s["eval_set"] == "train[700:1000]" and s["train_images"] == 700
    assert s["val_subset"] == 100 and s["precision"] == "32-true"
    assert s == json.loads((run_dir / "summary.json").read_text())
    for key in ("official_test_acc", "official_test_acc_exact", "official_test_acc_jpeg",
                *(f"robust_acc_{c}" for c in CORRUPTIONS)):
        assert isinstance(s[key], float) and 0 <= s[key] <= 100, key
    dm = CIFAR10DataModule(str(cifar_npz), eval_set="holdout", holdout=[700, 1000])
    model = load_deploy(run_dir / "deploy.pt").model
    got = accuracy(model, dm.eval_loader(*dm.eval_arrays("primary")))
    assert got["all"] == pytest.approx(s["test_acc_decomposed"], abs=1e-3)
    x, y, exact = dm.eval_arrays("official")
    off = accuracy(model, dm.eval_loader(x, y, exact))
    assert (off["all"], off["exact"], off["jpeg"]) == pytest.approx(
        (s["official_test_acc"], s["official_test_acc_exact"], s["official_test_acc_jpeg"]), abs=1e-3)
    blur = accuracy(model, dm.eval_loader(corrupt(dm.eval_arrays()[0], "blur"), dm.eval_arrays()[1]))
    assert blur["all"] == pytest.approx(s["robust_acc_blur"], abs=1e-3)


def test_accuracy_splits_exact_and_jpeg_parts():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()

    y = torch.tensor([0, 0, 1, 1])
    m = torch.tensor([True, False, True, False])
    got = accuracy(Fixed(), [(torch.zeros(4, 3, 2, 2), y, m)])
    assert got == {"all": 50.0, "exact": 50.0, "jpeg": 50.0}
    assert accuracy(Fixed(), [(torch.zeros(2, 3, 2, 2), torch.tensor([0, 0]))]) == {"all": 100.0, "exact": None, "jpeg": None}
