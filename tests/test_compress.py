"""src/compress: the compression baselines at a matched multiplication budget (structured,
prune_l1, svd_weight, svd_spatial), their exactness where they are exact, their counts and their
errors; the experiment configs that name them."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import src.runs  # noqa: F401  (registers the run_suffix resolver the configs use)
from src.compress import METHODS, TOLERANCE, compress
from src.compress.prune import l1_order
from src.compress.structured import ladder
from src.compress.svd import apply_ranks, full_rank, svd_split
from src.models import create_model
from src.structured import StructuredConv2d, complexity, decompose, structured_layers

from .conftest import ROOT, rel_err

SIZE = (3, 32, 32)
# the A / B budgets of conf/exp/cifar10/compress/*_{a,b}.yaml: struct_resnet20_{a,b} (decomposed) / resnet20
RESNET20_MULTS, A_MULTS, B_MULTS = 40_551_040, 18_268_800, 13_812_352


@pytest.fixture(autouse=True)
def _one_thread():
    """Batch-1 forwards and small SVDs: one thread (more only contend on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and statistics, so no BN is the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


_MODELS: dict[str, nn.Module] = {}


def dense(name: str) -> nn.Module:
    if name not in _MODELS:
        torch.manual_seed(1)
        _MODELS[name] = _trained_like(create_model(name))
    return _MODELS[name]


def mults(model: nn.Module) -> int:
    return complexity(model, SIZE, device="cpu").mults_decomposed


def flop_counter_macs(model: nn.Module) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *SIZE, dtype=next(model.parameters()).dtype))
    return counter.get_total_flops() // 2  # 2 FLOPs per multiply-accumulate


# ----------------------------------------------------------------------------- SVD exactness
CONVS = [  # (in, out, stride, padding, dilation, bias, input H x W)
    (16, 16, 1, 1, 1, False, (9, 11)),
    (16, 32, 2, 1, 1, False, (10, 7)),
    (5, 12, 1, 2, 2, True, (8, 8)),
    (24, 6, 2, 0, 1, True, (11, 12)),
]


@pytest.mark.parametrize("kind", ["weight", "spatial"])
@pytest.mark.parametrize("spec", CONVS, ids=lambda s: f"{s[0]}-{s[1]}-s{s[2]}p{s[3]}d{s[4]}{'b' if s[5] else ''}")
def test_svd_at_full_rank_reproduces_the_conv_exactly(kind, spec):
    cin, cout, stride, pad, dil, bias, (h, w) = spec
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, stride, pad, dil, bias=bias).double()
    x = torch.randn(2, cin, h, w, dtype=torch.float64)
    r = full_rank(conv, kind)
    assert r == (min(cout, cin * 9) if kind == "weight" else min(cin * 3, cout * 3))
    split = svd_split(conv, kind, r)
    shapes = [tuple(m.weight.shape) for m in split]
    assert shapes == ([(r, cin, 3, 3), (cout, r, 1, 1)] if kind == "weight" else [(r, cin, 3, 1), (cout, r, 1, 3)])
    with torch.no_grad():
        assert rel_err(split(x), conv(x)) < 1e-12
        assert rel_err(svd_split(conv, kind, max(1, r // 3))(x), conv(x)) > 1e-3  # truncation does cut
    with pytest.raises(ValueError, match=rf"rank={r + 1}.*1\.\.{r}"):
        svd_split(conv, kind, r + 1)


@pytest.mark.parametrize("kind", ["weight", "spatial"])
def test_svd_at_full_rank_reproduces_resnet20_exactly(kind):
    model = copy.deepcopy(dense("resnet20")).double()
    names = [n for n, m in model.named_modules() if n.startswith("layer") and isinstance(m, nn.Conv2d)]
    ranks = {n: full_rank(model.get_submodule(n), kind) for n in names}
    split = apply_ranks(copy.deepcopy(model), kind, ranks)
    assert all(isinstance(split.get_submodule(n), nn.Sequential) for n in names)
    x = torch.randn(2, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(split(x), model(x)) < 1e-11


def test_spatial_svd_agrees_with_aimet():
    """The same truncated spatial SVD as AIMET's splitter (where aimet-torch is installed)."""
    splitter = pytest.importorskip("aimet_torch.svd.svd_splitter")
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
    x = torch.randn(2, 16, 12, 12)
    ours = svd_split(conv, "spatial", 10)
    theirs = nn.Sequential(*splitter.SpatialSvdModuleSplitter.split_module(conv, 10))
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < 1e-4


# ----------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("method", METHODS)
def test_ratio_one_is_the_identity(method):
    model = dense("resnet20")
    same = compress(model, method, 1.0, SIZE)
    assert same.compress_info["achieved_mults_ratio"] == 1.0 and not any(True for _ in structured_layers(same))
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), model(x))


def test_prune_l1_keeps_the_largest_filters_and_computes_what_zeroing_the_rest_does():
    model = copy.deepcopy(dense("resnet20")).double()
    pruned = compress(model, "prune_l1", 0.5, SIZE)
    reference = copy.deepcopy(model)  # the same network with the pruned channels zeroed
    n_pruned = 0
    for name, block in model.named_modules():
        if not name.startswith("layer") or name.count(".") != 1:
            continue
        small = pruned.get_submodule(name)
        k = small.conv1.out_channels
        kept = sorted(l1_order(block.conv1)[block.conv1.out_channels - k:].tolist())
        dropped = sorted(set(range(block.conv1.out_channels)) - set(kept))
        n_pruned += len(dropped)
        assert pruned.compress_info["layers"][f"{name}.conv1"] == {"filters": k, "of": block.conv1.out_channels}
        assert torch.equal(small.conv1.weight, block.conv1.weight[kept])
        assert torch.equal(small.bn1.running_var, block.bn1.running_var[kept])
        assert torch.equal(small.conv2.weight, block.conv2.weight[:, kept])
        assert small.conv2.out_channels == block.conv2.out_channels  # block outputs / shortcuts untouched
        norms = block.conv1.weight.abs().sum((1, 2, 3))
        if dropped:
            assert norms[dropped].max() <= norms[kept].min()
        with torch.no_grad():
            reference.get_submodule(name).conv2.weight[:, dropped] = 0
    assert n_pruned > 0
    x = torch.randn(2, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(pruned.eval()(x), reference.eval()(x)) < 1e-12
    assert pruned.conv1 is not model.conv1 and model.layer1[0].conv1.out_channels == 16  # the input is untouched


# ----------------------------------------------------------------------------- budgets and counts
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, ratios", [("resnet20", (0.3, 0.5, 0.7)), ("resnet56", (0.3, 0.5, 0.7))])
def test_every_method_meets_its_mults_target(method, name, ratios):
    model = dense(name)
    reference = mults(model)
    for ratio in ratios:
        small = compress(model, method, ratio, SIZE)
        achieved = mults(small) / reference
        assert abs(achieved / ratio - 1) <= TOLERANCE, (method, name, ratio, achieved)
        info = small.compress_info
        assert info["method"] == method and info["target_mults_ratio"] == ratio
        assert info["achieved_mults_ratio"] == achieved and info["mults"] == mults(small)
        assert info["mults_reference"] == reference and 0 < info["knob"]["value"] <= 1
        assert (method == "structured") == any(True for _ in structured_layers(small))
        # the stem and the classifier are never touched
        assert torch.equal(small.conv1.weight, model.conv1.weight) and torch.equal(small.fc.weight, model.fc.weight)
    assert mults(model) == reference and not hasattr(model, "compress_info")


@pytest.mark.filterwarnings("ignore:decompose.*is not structured")  # (unprojected kernels: counted all the same)
@pytest.mark.parametrize("method", METHODS)
def test_counts_agree_with_flop_counter_and_the_model_trains(method):
    model = dense("resnet20")
    small = compress(model, method, 0.5, SIZE)
    cost = complexity(small, SIZE, device="cpu")
    counted = decompose(small) if method == "structured" else small  # structured: the deploy form runs
    assert flop_counter_macs(counted) == cost.mults_decomposed
    assert flop_counter_macs(model) == RESNET20_MULTS
    # an ordinary module that trains: every parameter gets a gradient and one SGD step lowers the loss
    small.train()
    x, y = torch.randn(8, *SIZE), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(small.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(small(x), y)
        loss.backward()
        assert all(p.grad is not None for p in small.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


def test_structured_reproduces_the_a_and_b_rule_sets_at_their_budgets():
    model = dense("resnet20")
    for ratio, mults_ab, frac in ((A_MULTS / RESNET20_MULTS, A_MULTS, 1.0), (B_MULTS / RESNET20_MULTS, B_MULTS, 0.75)):
        small = compress(model, "structured", ratio, SIZE)
        assert mults(small) == mults_ab
        for name, layer in small.named_modules():
            if name.startswith("layer"):
                assert not type(layer) is nn.Conv2d or "downsample" in name
                if isinstance(layer, StructuredConv2d):
                    assert (layer.inner_channels, layer.inner_kernel_size) == (round(frac * layer.in_channels), 2)
                    # the dense weights are copied in
                    assert torch.equal(layer.weight, model.get_submodule(name).weight)
    assert ladder(4, 3) == [(1, 1), (2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2), (2, 3), (3, 3), (4, 3)]


def test_bad_method_ratio_or_model_is_a_clear_error():
    model = dense("resnet20")
    with pytest.raises(ValueError, match=r"method='bogus'.*allowed: structured, prune_l1, svd_weight, svd_spatial"):
        compress(model, "bogus", 0.5, SIZE)
    for bad in (0, 1.5, -0.2, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=re.escape(f"mults_ratio={bad!r} must be a number in (0, 1]")):
            compress(model, "svd_weight", bad, SIZE)
    for method in METHODS:  # below the floor: the stem, the classifier and each unit's smallest option
        with pytest.raises(ValueError, match=rf"compress\({method}\): mults_ratio=0.005 is out of reach: .* "
                                             rf"reaches mults ratios 0\.0\d+ \.\. 1"):
            compress(model, method, 0.005, SIZE)
    with pytest.raises(ValueError, match="no residual block"):
        compress(create_model("cifar_mobilenet_v2"), "prune_l1", 0.5, SIZE)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1 is a StructuredConv2d"):
        compress(create_model("struct_resnet20_a"), "svd_weight", 0.5, SIZE)


# ----------------------------------------------------------------------------- configuration
CONF = ROOT / "conf"


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_experiment_configs_name_each_method_at_the_a_and_b_budgets():
    from src.config_check import validate

    files = sorted((CONF / "exp" / "cifar10" / "compress").glob("*.yaml"))
    assert [f.stem for f in files] == sorted(f"{m}_{v}" for m in METHODS for v in "ab")
    for f in files:
        cfg = _compose([f"+exp=cifar10/compress/{f.stem}"])
        method, variant = f.stem.rsplit("_", 1)
        target = {"a": A_MULTS, "b": B_MULTS}[variant] / RESNET20_MULTS
        assert cfg.model.name == "resnet20" and cfg.model.compress.method == method
        assert cfg.model.compress.mults_ratio == round(target, 6), f
        assert cfg.model.init_from is None and cfg.tag == f"_{f.stem}"
        validate(cfg)


def test_config_check_names_the_compress_and_init_keys():
    from src.config_check import ConfigError, validate

    cases = [
        (["+model.compress.method=prune"], r"model.compress.method='prune': must be one of structured, prune_l1"),
        (["+model.compress.method=svd_weight"], r"model.compress.mults_ratio=null: .* needs a target"),
        (["+model.compress.mults_ratio=0.5"], r"model.compress.mults_ratio=0.5: set model.compress.method too"),
        (["+model.compress.method=prune_l1", "+model.compress.mults_ratio=1.5"],
         r"model.compress.mults_ratio=1.5: must be a number > 0 and <= 1"),
        (["model.name=struct_resnet20_a", "+model.compress.method=prune_l1", "+model.compress.mults_ratio=0.5"],
         r"compression starts from the dense model \(use model.name=resnet20\)"),
        (["model.init_from=x.ckpt", "+model.pretrained=true"], r"model.init_from='x.ckpt' and model.pretrained=true"),
        (["+model.pretrained=1"], r"model.pretrained=1: must be true or false"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate(_compose(overrides))
    validate(_compose(["+model.compress.method=structured", "+model.compress.mults_ratio=0.4", "model.init_from=x.ckpt"]))


def test_the_new_keys_leave_existing_configurations_their_identity():
    """model.init_from is no part of a run's identity and the other keys are absent by default, so
    the runs made before them keep their config_hash and resume."""
    from src import runs

    ident = runs.identity(_compose(["+exp=cifar10/struct_resnet20_a", "model.init_from=/somewhere/last.ckpt"]))
    assert not [k for k in ident if k.startswith(("model.init_from", "model.pretrained", "model.compress"))]
    ident = runs.identity(_compose(["+exp=cifar10/compress/svd_weight_b"]))
    assert ident["model.compress.method"] == "svd_weight" and "model.init_from" not in ident


def test_compare_lambda_pulls_the_loaded_dense_weights_towards_structure(tmp_path):
    """experiments.compare_lambda builds the fine-tune's model from a dense deploy.pt (the dense
    weights copied in, far from structure), and the structural loss alone lowers its residual,
    faster at a larger lambda."""
    from experiments.compare_lambda import compressed, mean_residual, simulate
    from src.deploy import save_deploy

    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    path = save_deploy(tmp_path / "deploy.pt", dense, model_name="resnet20", route="regularized", num_classes=10,
                       mean=[0.5] * 3, std=[0.25] * 3, input_size=[3, 32, 32])
    curves = {}
    for lam in (0.1, 1.0):
        model, optim_cfg = compressed("a", path)
        assert torch.equal(model.layer1[0].conv1.weight, dense.layer1[0].conv1.weight)  # copied in
        start = mean_residual(model)
        assert start > 0.3
        curves[lam] = simulate(model, optim_cfg, lam, epochs=2, ramp_epochs=0.5, steps_per_epoch=10)
        assert curves[lam][0] < start and curves[lam][1] < curves[lam][0]
    assert curves[1.0][-1] < curves[0.1][-1]
    with pytest.raises(SystemExit, match="no such file"):
        from experiments.compare_lambda import main
        main(["--init-from", str(tmp_path / "missing.pt")])
