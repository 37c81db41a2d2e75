"""structurize on real architectures (torchvision, timm) and its error contract."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from src.structured import (
    DecomposedConv2d,
    DecomposedLinear,
    StructuredConv2d,
    StructuredLinear,
    decompose,
    plan_structure,
    project,
    structural_loss,
    structurize,
)

from .conftest import rel_err

RESNET_RULES = {
    "rules": [
        {"type": "conv", "kernel_size": 3, "c": 0.5, "n": 2},
        {"type": "conv", "kernel_size": 1, "c": 0.5},
        {"type": "linear", "c": 0.25},
    ],
    "exclude": ["conv1"],
}
MOBILENET_RULES = [
    {"depthwise": True, "n": -1},
    {"kernel_size": 1, "c": 0.5, "exclude": ["features.18.*"]},
]


def randomize_bn(model):
    """Random BN statistics and affine terms, so eval-mode equality is not trivial."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def check_project_decompose(model, rules, input_shape, dtype, tol, **kw):
    with torch.no_grad():
        randomize_bn(model)
    dense_out = model.eval()(torch.randn(*input_shape))
    report = structurize(model, rules, **kw)
    assert len(report) > 0
    model = model.to(dtype).eval()
    x = torch.randn(*input_shape, dtype=dtype)
    with torch.no_grad():
        out = model(x)  # forward works on the structured (train-form) model
        assert out.shape == dense_out.shape
        assert float(structural_loss(model)) > 0
        project(model)
        assert float(structural_loss(model)) < 1e-6 * len(report)
        projected = model(x)
        deployed = decompose(model)
        assert not any(isinstance(m, (StructuredConv2d, StructuredLinear)) for m in deployed.modules())
        assert rel_err(deployed(x), projected) <= tol
    return report, deployed


def test_resnet18_structurize_project_decompose():
    model = torchvision.models.resnet18(num_classes=10)
    report, deployed = check_project_decompose(model, RESNET_RULES, (2, 3, 64, 64), torch.float64, 1e-10)
    names = {r.name for r in report}
    assert "conv1" not in names and "fc" in names and "layer1.0.conv1" in names
    assert "layer2.0.downsample.0" in names
    assert sum(isinstance(m, DecomposedConv2d) for m in deployed.modules()) == 19
    assert isinstance(deployed.fc, DecomposedLinear)
    assert "replaced" in str(report)


def test_mobilenet_v2_structurize_project_decompose():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    report, _ = check_project_decompose(
        model, MOBILENET_RULES, (2, 3, 64, 64), torch.float32, 1e-4, exclude=["features.0.*"]
    )
    dw = [r for r in report if r.rule == 0]
    assert len(dw) == 17 and all(r.full[0] == 1 and r.inner == (1, 2, 2) for r in dw)


def test_timm_efficientnet_structurize_project_decompose():
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=10)
    rules = [{"depthwise": True, "n": -1}, {"kernel_size": 1, "c": 0.75}]
    report, _ = check_project_decompose(
        model, rules, (2, 3, 64, 64), torch.float64, 1e-10, exclude=["conv_stem"]
    )
    inner_n = {r.full[1]: r.inner[1] for r in report if r.rule == 0}
    assert inner_n == {3: 2, 5: 4}  # both depthwise kernel sizes of EfficientNet
    assert any(".se.conv_reduce" in r.name for r in report)  # 1x1 convs with bias (SE)


def test_timm_reparameterize_model_converts_structured_layers():
    model = torchvision.models.resnet18(num_classes=10)
    structurize(model, RESNET_RULES)
    project(model.eval())
    deployed = timm.utils.reparameterize_model(model)
    assert isinstance(deployed.layer1[0].conv1, DecomposedConv2d)
    assert isinstance(model.layer1[0].conv1, StructuredConv2d)  # not in place by default
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert rel_err(deployed(x), model(x)) < 1e-4


def test_weights_are_copied_and_shared_modules_replaced_everywhere():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    w = shared.weight.detach().clone()
    structurize(model, [{"c": 2, "n": 2}])
    assert model[0] is model[2] and isinstance(model[0], StructuredConv2d)
    assert torch.equal(model[0].weight, w)


# ------------------------------------------------------------------------------- bad input


def small_model():
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2))


def assert_untouched(model, before):
    assert not any(isinstance(m, (StructuredConv2d, StructuredLinear)) for m in model.modules())
    for (k, v), (k0, v0) in zip(model.state_dict().items(), before.items()):
        assert k == k0 and torch.equal(v, v0)


@pytest.mark.parametrize(
    "rule,pattern",
    [
        ({"c": 5}, r"layer '2' .*inner_channels c=5 violates 1 <= c <= in_channels/groups = 4"),
        ({"c": -4}, r"layer '2' .*inner_channels c=0 violates"),
        ({"n": 4}, r"layer '0' .*inner_kernel_size n=4 violates 1 <= n <= kernel_size N = 3"),
        ({"n": -3}, r"layer '0' .*inner_kernel_size n=0 violates"),
    ],
)
def test_impossible_sizes_name_the_rule_and_layer_and_replace_nothing(rule, pattern):
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=pattern) as err:
        structurize(model, [rule])
    assert "rule 0" in str(err.value)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    "layer,pattern",
    [
        (nn.Conv2d(8, 8, (1, 3)), "non-square kernel 1x3"),
        (nn.ConvTranspose2d(8, 8, 3), "transposed convolutions are not supported"),
        (nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect' is not supported"),
        (nn.Conv1d(8, 8, 3), "only nn.Conv2d"),
    ],
)
def test_unsupported_layers_are_rejected_by_name(layer, pattern):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"layer '1' \({type(layer).__name__}\): {pattern}"):
        structurize(model, [{"c": 2}])
    assert_untouched(model, before)


def test_subclass_with_its_own_forward_is_rejected():
    model = nn.Sequential(timm.layers.Conv2dSame(3, 8, 3, stride=2))
    with pytest.raises(ValueError, match="layer '0' \\(Conv2dSame\\): subclass of nn.Conv2d with its own forward"):
        structurize(model, [{"n": 2}])


@pytest.mark.parametrize(
    "rules,pattern",
    [
        ([{"kernal_size": 3}], r"rule 0: unknown keys \['kernal_size'\]"),
        ([{"c": 1.5}], r"rule 0: 'c' must be an int .* or a float ratio in \(0, 1\], got 1.5"),
        ([{"n": True}], r"rule 0: 'n' must be"),
        ([{"type": "deconv"}], r"rule 0: type must be 'conv' or 'linear'"),
        ([{"type": "linear", "n": 2}], r"rule 0: linear rules take only 'c'"),
        ({"rules": [], "exlude": []}, r"unknown top-level keys \['exlude'\]"),
        ([{"c": 2}, {"kernel_size": 5, "c": 2}], r"rule 1 \(.*kernel_size=\(5,\).*\) matches no layer"),
    ],
)
def test_bad_rules_are_reported(rules, pattern):
    model = small_model()
    with pytest.raises(ValueError, match=pattern):
        structurize(model, rules)
    assert not any(isinstance(m, StructuredConv2d) for m in model.modules())


def test_allow_unmatched_and_dry_run():
    model = small_model()
    report = plan_structure(model, [{"kernel_size": 5}], allow_unmatched=True)
    assert len(report) == 0
    report = plan_structure(model, [{"groups": 2, "c": 2, "n": 2}])
    assert [r.name for r in report] == ["2"] and report.replacements[0].inner == (2, 2, 2)
    assert not isinstance(model[2], StructuredConv2d)  # plan only


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(inner_channels=5, inner_kernel_size=2), "inner_channels c=5 violates"),
        (dict(inner_channels=0, inner_kernel_size=2), "inner_channels c=0 violates"),
        (dict(inner_channels=2, inner_kernel_size=4), "inner_kernel_size n=4 violates"),
        (dict(inner_channels=2, inner_kernel_size=0), "inner_kernel_size n=0 violates"),
        (dict(inner_channels=2.0, inner_kernel_size=2), "inner_channels must be an int"),
    ],
)
def test_layer_constructor_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        StructuredConv2d(4, 4, 3, **kwargs)


def test_linear_constructor_validation():
    with pytest.raises(ValueError, match="inner_features c=9 violates 1 <= c <= in_features = 8"):
        StructuredLinear(8, 2, inner_features=9)
    with pytest.raises(ValueError, match="non-square kernel"):
        StructuredConv2d(4, 4, (3, 1), inner_channels=2, inner_kernel_size=1)


def test_rule_files_optional_rules_and_descriptions(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {kernel_size: 3, depthwise: false, c: 0, n: 2}\n"
        "  - {kernel_size: 1, c: 0.5, optional: true}  # no 1x1 conv in this model\n"
        "exclude: ['0']\n"
    )
    model = small_model()
    report = structurize(model, path)
    assert [r.name for r in report] == ["2"] and report.replacements[0].inner == (4, 2, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {kernel_size: 3, c: 9}\n")
    with pytest.raises(ValueError, match=r"rule 0 \(type='conv', kernel_size=\(3,\), c=9\): layer '0'"):
        structurize(small_model(), bad)
    with pytest.raises(ValueError, match="does not exist"):
        structurize(small_model(), tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("rules:\n  - {kernel: 3}\n")
    with pytest.raises(ValueError, match=r"typo.yaml: rule 0: unknown keys \['kernel'\]"):
        structurize(small_model(), typo)
