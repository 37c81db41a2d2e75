"""decompose(layer) == the dense conv / linear with the projected kernel (docs/method.md sections 2 and 6)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from src.structured import DecomposedConv2d, DecomposedLinear, StructuredConv2d, StructuredLinear, decompose

from .conftest import rel_err

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# (C = in_channels, Cout, N, c per group, n, groups)
SHAPES = [
    (4, 6, 3, 2, 2, 1),
    (4, 6, 3, 4, 2, 1),  # spatial structure only
    (4, 6, 3, 1, 1, 1),  # most aggressive: one coefficient per filter
    (8, 4, 3, 3, 2, 2),  # grouped
    (6, 6, 3, 1, 2, 6),  # depthwise
    (6, 12, 5, 1, 3, 6),  # depthwise, channel multiplier 2
    (5, 3, 5, 2, 3, 1),
    (5, 3, 5, 5, 5, 1),  # c = C, n = N: trivially structured
    (8, 8, 1, 3, 1, 1),  # 1x1: channel structure only
    (8, 4, 1, 2, 1, 2),  # grouped 1x1
    (3, 4, 5, 1, 1, 1),
    (16, 8, 3, 8, 2, 1),
    (4, 5, 4, 2, 3, 1),  # even kernels: 'same' pads asymmetrically
    (3, 4, 2, 2, 1, 1),
]
# (stride, padding, dilation)
GEOMETRY = [
    (1, 0, 1),
    (1, 1, 1),
    (2, 1, 1),
    (1, "same", 1),
    (1, "same", 2),  # 'same' with dilation: even total padding
    ((2, 1), (1, 2), 1),
    (1, 2, 2),
    (3, (0, 1), (2, 1)),
]
CASES = [(*s, *g) for s, g in itertools.product(SHAPES, GEOMETRY)]


def make_layer(C, Cout, N, c, n, groups, stride, padding, dilation, bias, dtype):
    layer = StructuredConv2d(C, Cout, N, stride, padding, dilation, groups, bias,
                             inner_channels=c, inner_kernel_size=n).to(dtype)
    return layer.project_()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_decomposed_conv_equals_projected_dense(case, channels_last, dtype):
    C, Cout, N, c, n, groups, stride, padding, dilation = CASES[case]
    bias = case % 2 == 0
    batch = 1 + case % 3
    layer = make_layer(C, Cout, N, c, n, groups, stride, padding, dilation, bias, dtype)
    x = torch.randn(batch, C, 13, 11, dtype=dtype)  # non-square input
    dec = decompose(layer)
    assert isinstance(dec, DecomposedConv2d)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        layer, dec = layer.to(memory_format=torch.channels_last), dec.to(memory_format=torch.channels_last)
    ref = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, groups)
    out = dec(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOL[dtype]
    # deploy parameters: exactly Cout * c * n^2 (+ bias)
    assert sum(p.numel() for p in dec.parameters()) == Cout * c * n * n + (Cout if bias else 0)
    assert dec.conv.weight.shape == (Cout, c, n, n)
    assert rel_err(dec.composed_weight(), layer.weight) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fin,fout,c", [(1, 3, 1), (5, 4, 2), (16, 10, 8), (16, 10, 16), (9, 2, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_decomposed_linear_equals_projected_dense(fin, fout, c, bias, dtype):
    layer = StructuredLinear(fin, fout, bias, inner_features=c).to(dtype).project_()
    dec = decompose(layer)
    assert isinstance(dec, DecomposedLinear)
    for shape in [(4, fin), (2, 3, fin)]:  # leading dims are batch / sequence
        x = torch.randn(*shape, dtype=dtype)
        assert rel_err(dec(x), F.linear(x, layer.weight, layer.bias)) <= TOL[dtype]
    assert sum(p.numel() for p in dec.parameters()) == fout * c + (fout if bias else 0)


def test_decompose_does_not_modify_the_original_and_warns_on_unstructured():
    layer = StructuredConv2d(8, 4, 3, padding=1, inner_channels=4, inner_kernel_size=2).double()
    w0 = layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="not structured"):
        dec = decompose(layer)
    assert torch.equal(layer.weight, w0)  # untouched
    # the decomposition is that of the projection
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    layer.project_()
    assert rel_err(dec(x), layer(x)) < 1e-10


def test_model_level_decompose_names_the_layer_in_its_warning():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        StructuredConv2d(8, 8, 3, padding=1, inner_channels=4, inner_kernel_size=2),
        torch.nn.Flatten(),
        StructuredLinear(8 * 25, 10, inner_features=50),
    )
    with pytest.warns(UserWarning) as record:
        dec = decompose(model)
    messages = " ".join(str(w.message) for w in record)
    assert "layer '1'" in messages and "layer '3'" in messages
    assert isinstance(dec[1], DecomposedConv2d) and isinstance(dec[3], DecomposedLinear)
    assert isinstance(model[1], StructuredConv2d)  # original untouched


def test_decomposed_alpha_trains_and_init_matches_dense_variance():
    """Direct route: alpha is an ordinary parameter; the composed kernel has the default dense
    init's variance (nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), var = 1/(3 fan_in))."""
    torch.manual_seed(0)
    dec = DecomposedConv2d(64, 256, 3, padding=1, inner_channels=32, inner_kernel_size=2)
    composed = dec.composed_weight().detach()
    dense = torch.nn.Conv2d(64, 256, 3).weight.detach()
    ratio = float(composed.square().mean() / dense.square().mean())
    assert 0.9 < ratio < 1.1, ratio
    lin = DecomposedLinear(128, 512, inner_features=32)
    ratio_lin = float(lin.composed_weight().detach().square().mean() / torch.nn.Linear(128, 512).weight.detach().square().mean())
    assert 0.9 < ratio_lin < 1.1, ratio_lin
    # gradients reach alpha, and an SGD step changes the output
    x = torch.randn(2, 64, 8, 8)
    dec(x).square().mean().backward()
    assert dec.conv.weight.grad is not None and dec.conv.weight.grad.abs().sum() > 0
    # decompose(..., reinit=True) re-initialises alpha for training from scratch
    layer = StructuredConv2d(64, 256, 3, padding=1, inner_channels=32, inner_kernel_size=2)
    fresh = decompose(layer, reinit=True, tol=1.0)
    ratio2 = float(fresh.composed_weight().detach().square().mean() / dense.square().mean())
    assert 0.9 < ratio2 < 1.1, ratio2


@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_recompose_is_a_plain_layer(channels_last):
    """decompose(..., recompose={name: "dense"}) deploys a plain nn.Conv2d / nn.Linear holding the
    projected kernel: no longer a structured layer for structured_layers, structural_loss and
    complexity (counted as the dense k x k conv it is), and the same function as the decomposed model."""
    from torch import nn

    from src.structured import complexity, project, project_weight, structural_loss, structured_layers

    model = nn.Sequential(
        StructuredConv2d(6, 8, 3, stride=2, padding=1, inner_channels=3, inner_kernel_size=2),
        nn.ReLU(),
        StructuredConv2d(8, 8, 3, padding="same", dilation=2, groups=2, bias=False, inner_channels=2,
                         inner_kernel_size=2),
        nn.Flatten(),
        StructuredLinear(8 * 5 * 5, 5, inner_features=9),
    ).double()
    project(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(3, 6, 9, 10, dtype=torch.float64)
    dense_names = {"0": "dense", "2": "dense", "4": "dense"}
    for recompose in (dense_names, ["0", "2", "4"], {"0": "dense"}):
        dec = decompose(model, recompose=recompose)
        for name in recompose:
            layer, src = dec.get_submodule(name), model.get_submodule(name)
            plain = nn.Linear if name == "4" else nn.Conv2d
            assert type(layer) is plain, (name, type(layer))
            assert torch.equal(layer.weight, project_weight(src.weight.detach(), src.inner_shape))
            assert rel_err(layer.weight, src.weight) <= 1e-12  # projected already: P W == W to rounding
            assert (layer.bias is None) == (src.bias is None)
            if plain is nn.Conv2d:
                for attr in ("stride", "padding", "dilation", "groups", "kernel_size", "padding_mode"):
                    assert getattr(layer, attr) == getattr(src, attr), attr
                assert layer.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert not list(structured_layers(dec))  # the others are decomposed
        for name in {"0", "2", "4"} - set(recompose):
            assert isinstance(dec.get_submodule(name), (DecomposedConv2d, DecomposedLinear))
        with torch.no_grad():
            assert rel_err(dec(x), decompose(model)(x)) <= 1e-12
    dec = decompose(model, recompose=dense_names)
    assert float(structural_loss(dec)) == 0.0
    c = complexity(dec, (6, 9, 10))
    costs = {cost.name: cost for cost in c.layers}
    assert [costs[n].kind for n in ("0", "2", "4")] == ["conv", "conv", "linear"]
    outs = 8 * 5 * 5  # stride 2, padding 1: 9 x 10 -> 5 x 5
    assert (costs["0"].params, costs["0"].mults) == (8 * 6 * 9 + 8, outs * 6 * 9)
    assert (costs["2"].params, costs["2"].mults) == (8 * 4 * 9, outs * 4 * 9)  # groups 2: C/g = 4
    assert (costs["4"].params, costs["4"].mults) == (5 * 200 + 5, 5 * 200)
    assert c.params == c.params_decomposed == sum(p.numel() for p in dec.parameters())
    assert c.mults == c.mults_decomposed == complexity(model, (6, 9, 10)).mults
    # the single-layer form too, with requires_grad and mode kept
    layer = model[0].eval()
    single = decompose(layer, recompose={"": "dense"})
    assert type(single) is nn.Conv2d and not single.training and single.weight.requires_grad
    with torch.no_grad():
        assert rel_err(single(x), decompose(layer)(x)) <= 1e-12
