"""The model zoo: every registered name builds, trains, decomposes exactly and is counted."""

import fnmatch
import io
import math
import os
from importlib import resources
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn

from src.models import create_model, get_entry, list_models, load_structure
from src.structured import StructuredLayer, complexity, decompose, project

from .conftest import ROOT, rel_err
from .test_structurize import randomize_bn

ALL = list_models()
DENSE = list_models(dense_only=True)


def small_input(name: str) -> tuple[int, ...]:
    entry = get_entry(name)
    if entry.task == "segmentation":
        return (2, 3, 64, 128)
    if entry.input_size[1] <= 32:
        return (2, *entry.input_size)
    return (2, 3, 64, 64)


def test_registry_lists_every_contract_name():
    expected = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
                "resnet50", "mobilenet_v2", "cifar_mobilenet_v2", "efficientnet_b0", "efficientnet_b1",
                "hrnet_w18_small_v2", "hrnetv2_w18_small_v2_seg"}
    assert set(DENSE) == expected
    assert set(ALL) == expected | {f"struct_{n}_{v}" for n in expected for v in "ab"}


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_project_decompose(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    shape = small_input(name)
    x = torch.randn(*shape)
    out = model.train()(x)
    expected = (2, 7, *shape[2:]) if get_entry(name).task == "segmentation" else (2, 7)
    assert out.shape == expected
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    structured = [m for m in model.modules() if isinstance(m, StructuredLayer)]
    assert bool(structured) == name.startswith("struct_")
    with torch.no_grad():
        randomize_bn(model)
        model.eval()
        project(model)
        projected = model(x)
        deployed = decompose(model)
        assert rel_err(deployed(x), projected) <= 1e-4
    cost = complexity(model, shape[1:])
    assert sum(p.numel() for p in deployed.parameters()) == cost.params_decomposed


def test_published_dense_anchors():
    def count(name, **kw):
        return complexity(create_model(name, **kw), get_entry(name).input_size)

    for name, params, macs in [("resnet20", 269_722, 40_551_040), ("resnet56", 853_018, 125_485_696)]:
        c = count(name)
        assert (c.params, c.mults) == (params, macs)
    assert count("resnet56", shortcut="B").params == 855_770  # 1x1 projection shortcuts
    c = count("resnet18")
    assert c.params == 11_689_512 and round(c.mults / 1e9, 2) == 1.81
    c = count("resnet50")
    assert c.params == 25_557_032 and c.mults + 1000 == 4_089_185_256  # anchor counts the fc bias
    c = count("mobilenet_v2")
    assert c.params == 3_504_872 and round(c.mults / 1e9, 2) == 0.30
    c = count("efficientnet_b0")
    assert round(c.params / 1e6, 2) == 5.29 and round(c.mults / 1e9, 2) == 0.39
    c = count("cifar_mobilenet_v2")
    assert 2.2e6 <= c.params <= 2.3e6 and 88 <= round(c.mults / 1e6) <= 100
    seg = create_model("hrnetv2_w18_small_v2_seg")
    assert seg.backbone.feature_info.channels() == [18, 36, 72, 144]
    assert round(sum(p.numel() for p in seg.backbone.parameters()) / 1e6, 2) == 3.86
    assert round(count("hrnetv2_w18_small_v2_seg").params / 1e6, 1) == 3.9


# (dense names, variant, max params ratio, max mults ratio): the targets of the model-zoo issue
TARGETS = [
    (["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"], "a", 0.56, 0.56),
    (["resnet18", "resnet50"], "a", 0.60, 0.60),
    (["resnet34"], "a", 0.60, 0.60),
    (["mobilenet_v2", "cifar_mobilenet_v2"], "a", 1.0, 0.75),
    (["efficientnet_b0", "efficientnet_b1", "hrnet_w18_small_v2", "hrnetv2_w18_small_v2_seg"], "a", 0.90, 0.75),
    (["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50"], "b", 0.40, 0.40),
    (["mobilenet_v2", "cifar_mobilenet_v2"], "b", 0.60, 0.60),
    (["efficientnet_b0", "efficientnet_b1", "hrnet_w18_small_v2", "hrnetv2_w18_small_v2_seg"], "b", 0.70, 0.60),
]


@pytest.mark.parametrize("names,variant,max_params,max_mults", TARGETS)
def test_variants_meet_reduction_targets(names, variant, max_params, max_mults):
    for name in names:
        size = get_entry(name).input_size
        dense = complexity(create_model(name), size)
        s = complexity(create_model(f"struct_{name}_{variant}"), size)
        assert s.params_decomposed / dense.params <= max_params, name
        assert s.mults_decomposed / dense.mults <= max_mults, name
        # B is always more aggressive than A
        if variant == "b":
            a = complexity(create_model(f"struct_{name}_a"), size)
            assert s.mults_decomposed < a.mults_decomposed, name


def test_stem_and_classifier_stay_dense():
    for name in DENSE:
        model = create_model(f"struct_{name}_b")
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        assert not isinstance(first_conv, StructuredLayer) and not isinstance(last, StructuredLayer), name


def test_timm_registry():
    model = timm.create_model("struct_resnet56_a", num_classes=10)
    assert any(isinstance(m, StructuredLayer) for m in model.modules())
    assert math.isclose(sum(p.numel() for p in model.parameters()), 853_018)
    # timm's own models are not shadowed
    assert type(timm.create_model("resnet18")).__module__.startswith("timm.")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("struct_resnet20_b", pretrained=True)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'struct_resnet56a'; did you mean .*struct_resnet56_a"):
        create_model("struct_resnet56a")
    with pytest.raises(ValueError, match=r"unknown model 'resnet57'.*resnet56"):
        create_model("resnet57")


def test_bad_rule_files_name_the_rule_and_layer(tmp_path):
    unmatched = tmp_path / "unmatched.yaml"
    unmatched.write_text("rules:\n  - {kernel_size: 7, n: 2}\n")
    with pytest.raises(ValueError, match=r"create_model\('resnet20'\) with .*unmatched.yaml: rule 0 .* matches no layer"):
        create_model("resnet20", structure=unmatched)
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text("rules:\n  - {kernel_size: 3, c: 20, n: 2}\n")
    with pytest.raises(ValueError, match=r"rule 0 .*: layer 'conv1' \(Conv2d\): inner_channels c=20 violates"):
        create_model("resnet20", structure=impossible)


# ------------------------------------------------------------------ rule sets: package data
def _packaged_rule_files() -> dict[str, str]:
    rules = resources.files("src.models") / "rules"
    return {f.name: f.read_text(encoding="utf-8") for f in rules.iterdir() if f.name.endswith(".yaml")}


def _needed_rule_files() -> set[str]:
    return {f"{e.family}_{e.variant}.yaml" for e in map(get_entry, ALL) if e.variant}


def test_rule_sets_are_package_data_with_identical_hydra_twins():
    """Each registered variant's rule set is packaged (src/models/rules/, what create_model reads);
    conf/structure/ (the Hydra group, structure=<name>) holds the same files, byte for byte."""
    packaged = _packaged_rule_files()
    assert set(packaged) == _needed_rule_files() and len(packaged) == 10
    hydra = {f.name for f in (ROOT / "conf" / "structure").glob("*.yaml")} - {"none.yaml"}
    assert hydra == set(packaged)
    for name, text in packaged.items():
        assert (ROOT / "conf" / "structure" / name).read_text(encoding="utf-8") == text, (
            f"conf/structure/{name} differs from src/models/rules/{name}: edit both "
            f"(cp src/models/rules/{name} conf/structure/{name})")


def test_pyproject_ships_the_rule_sets():
    """A non-editable install (pip install .) carries src/models/rules/*.yaml: pyproject.toml's
    package data covers every packaged rule file, and its package list holds src.models."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["src.models"]
    for name in _packaged_rule_files():
        assert any(fnmatch.fnmatch(f"rules/{name}", pat) for pat in patterns), name
    assert any(fnmatch.fnmatch("src.models", pat) for pat in setuptools["packages"]["find"]["include"])
    assert (ROOT / "src" / "models" / "__init__.py").is_file()  # a regular package: package-data applies


def test_rule_sets_load_without_the_repository_conf(tmp_path, monkeypatch):
    """As from an installed package: elsewhere, with every read under the repository's conf/
    refused, every rule set loads (importlib.resources) and every structured family builds."""
    conf = (ROOT / "conf").resolve()
    real_open = io.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            path = Path(os.fsdecode(file)).resolve()
            assert conf != path and conf not in path.parents, f"read {path} from the repository's conf/"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)  # pathlib and importlib.resources read through io.open
    monkeypatch.setattr("builtins.open", guarded_open)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="from the repository's conf/"):  # (the guard works)
        (ROOT / "conf" / "structure" / "resnet_a.yaml").read_text()
    first = {}  # (family, variant) -> the first model name using it
    for name in ALL:
        e = get_entry(name)
        if e.variant:
            first.setdefault((e.family, e.variant), name)
    assert len(first) == 10
    for (family, variant), name in sorted(first.items()):
        rules = load_structure(family, variant)
        assert rules["rules"], (family, variant)
        assert rules == yaml.safe_load(_packaged_rule_files()[f"{family}_{variant}.yaml"])
        assert any(isinstance(m, StructuredLayer) for m in create_model(name).modules()), name
