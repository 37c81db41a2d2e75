"""decompose(layer) == the dense conv / linear with the projected kernel (docs/method.md sections 2 and 6);
every deploy form (decomposed, "spatial", "dense") and the deploy plan that picks among them compute
the same function; the fast sum-pool paths the deployed models take are exact."""

import copy
import itertools
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from src.models import create_model
from src.structured import (
    CPU_SUM_POOL_POLICY,
    DecomposedConv2d,
    DecomposedLinear,
    StructuredConv2d,
    StructuredLinear,
    decompose,
    project,
    sum_pool_policy,
    sumpool,
)
from src.deploy import decompose_planned, plan_recompose

from .conftest import rel_err
from .test_sumpool import reference_sum_pool

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
    """decompose_planned(model, {name: "dense"}) deploys a plain nn.Conv2d / nn.Linear holding the
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
    for recompose in (dense_names, {"0": "dense"}):
        dec = decompose_planned(model, recompose)
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
    dec = decompose_planned(model, dense_names)
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
    single = decompose_planned(layer, {"": "dense"})
    assert type(single) is nn.Conv2d and not single.training and single.weight.requires_grad
    with torch.no_grad():
        assert rel_err(single(x), decompose(layer)(x)) <= 1e-12


# ------------------------------------------------------------------ deploy forms and the deploy plan
def _scripted_timer(monkeypatch, faster):
    """Replace the timer plan_recompose measures with: run every candidate once (they must agree:
    the forms are one function), then report decomposed = 1.0 and the other form `faster(out)`,
    where `out` is the layer's output. Called with two forms, decomposed first, so that the
    candidates are [decomposed, other]."""

    def timer(fns, reps=20, warmup=3, min_time=0.0):
        outs = [fn() for fn in fns]
        assert len(outs) == 2
        assert rel_err(outs[1], outs[0]) <= 1e-5
        return [1.0, faster(outs[0])]

    # wherever plan_recompose lives, the timer it calls is its module's `time_interleaved`
    monkeypatch.setattr(sys.modules[plan_recompose.__module__], "time_interleaved", timer)


def test_deploy_plan_rows_time_the_same_function(monkeypatch):
    model = project(create_model("struct_resnet20_a").eval())
    x = torch.randn(2, 3, 32, 32)
    every = [name for name, m in model.named_modules() if isinstance(m, StructuredConv2d)]
    width = {n: model.get_submodule(n).out_channels for n in every}
    # the plan follows the measurements: dense 2x faster at 16 channels -> re-composed; 3 % faster
    # at 32 (inside the 5 % margin) and slower at 64 -> left decomposed
    _scripted_timer(monkeypatch, lambda out: {16: 0.5, 32: 0.97}.get(out.shape[1], 2.0))
    plan = plan_recompose(model, x, reps=1, forms=("decomposed", "dense"))
    expected = {n: "dense" for n in every if width[n] == 16}
    assert expected and len(expected) < len(every)
    assert plan == expected
    half = every[::2]
    mixed = decompose_planned(model, dict.fromkeys(half, "dense"))  # one conv, the projected 3x3 kernel
    for n in every:
        layer = mixed.get_submodule(n)
        if n in half:
            assert isinstance(layer, torch.nn.Conv2d) and not isinstance(layer, DecomposedConv2d), n
            assert layer.kernel_size == (3, 3), n
        else:
            assert isinstance(layer, DecomposedConv2d), n
    with torch.no_grad():
        assert rel_err(mixed(x), decompose(model)(x)) <= 1e-5
        assert rel_err(decompose_planned(model, plan)(x), decompose(model)(x)) <= 1e-5
    with pytest.raises(ValueError, match="names no decomposable layer"):
        decompose_planned(model, {"fc": "dense"})
    with pytest.raises(TypeError):  # the core's decompose takes no plan: src.deploy.decompose_planned does
        decompose(model, recompose=half)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cw,groups,pad4", [(1, 1, (1, 1, 1, 1)), (1, 1, (0, 1, 0, 1)), (3, 2, (1, 0, 1, 0)),
                                            (40, 1, (0, 0, 0, 0)), (33, 2, (1, 1, 1, 1))])  # cw >= 32: cumsum
def test_sum_pool_fast_paths_are_exact(cw, groups, pad4, channels_last):
    """The inference paths the benchmark times (the CPU policy, the core's default: add passes
    into a preallocated output on inputs of >= small_input elements, cumulative-sum channel
    windows) against a loop over every tap, and the autograd path on the same input."""
    with sum_pool_policy(CPU_SUM_POOL_POLICY):
        _check_fast_paths(cw, groups, pad4, channels_last)


def _check_fast_paths(cw, groups, pad4, channels_last):
    x = torch.randn(2, 80, 45, 47, dtype=torch.float64)
    ref = reference_sum_pool(x, cw, (2, 2), pad4, (1, 1), groups)
    assert ref.numel() >= CPU_SUM_POOL_POLICY.small_input  # (the channel window shrinks the tensor first)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    pool = sumpool.SumPool(cw, 2, pad4, 1, groups)
    with mock.patch.object(sumpool, "_pair_sum", wraps=sumpool._pair_sum) as pair_sum:
        out = pool(x)
    symmetric = pad4[0] == pad4[1] and pad4[2] == pad4[3]
    # one add pass per spatial axis, except channels_last symmetric (one avg_pool2d / depthwise call)
    assert pair_sum.call_count == (0 if channels_last and symmetric else 2)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-13
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x.requires_grad_(True)
    with mock.patch.object(sumpool, "_pair_sum", wraps=sumpool._pair_sum) as pair_sum:
        trained = pool(x)
    assert pair_sum.call_count == 0 and rel_err(trained, ref) < 1e-13  # autograd: pads and adds
    trained.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("channels", [16, 48, 64, 96])
def test_channels_last_2x2_pool_paths_float32(channels):
    """The channels_last 2 x 2 inference paths in float32 of the CPU policy (depthwise ones-kernel
    conv below avgpool_min_channels, avg_pool2d from it on, avg_pool2d for small inputs) against
    the float64 loop; and the module fast path equals the functional one."""
    for batch in (1, 8):
        x = torch.randn(batch, channels, 33, 31, dtype=torch.float64)
        ref = reference_sum_pool(x, 1, (2, 2), (1, 1, 1, 1), (1, 1), 1)
        xc = x.float().to(memory_format=torch.channels_last)
        with torch.no_grad(), sum_pool_policy(CPU_SUM_POOL_POLICY):
            out = sumpool.sum_pool2d(xc, 1, 2, 1)
            assert torch.equal(sumpool.SumPool(1, 2, 1)(xc), out)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert out.shape == ref.shape and rel_err(out.double(), ref) < 1e-6


def test_deploy_forms_are_exact_and_validated(monkeypatch):
    """Every deploy form of a channel- and space-structured model computes the same function;
    the spatial form holds B(C, c) alpha over all channels; bad forms name the layer; the deploy
    plan moves exactly the layers measured faster in the spatial form."""
    model = project(create_model("struct_resnet20_b").eval()).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    names = [name for name, m in model.named_modules() if isinstance(m, StructuredConv2d)]
    ref = decompose(model)
    with torch.no_grad():
        y = ref(x)
        for form in ("spatial", "dense"):
            other = decompose_planned(model, {n: form for n in names})
            assert rel_err(other(x), y) < 1e-12, form
    spatial = decompose_planned(model, {names[0]: "spatial"})
    layer = spatial.get_submodule(names[0])
    assert isinstance(layer, DecomposedConv2d) and layer.pool.channel_window == 1
    assert layer.conv.weight.shape[1] == model.get_submodule(names[0]).in_channels  # all channels
    with pytest.raises(ValueError, match="unknown kind 'sparse'"):
        decompose_planned(model, {names[0]: "sparse"})
    lin = project(torch.nn.Sequential(StructuredLinear(8, 4, inner_features=3)))
    with pytest.raises(ValueError, match="'0'.*'spatial' does not apply to DecomposedLinear"):
        decompose_planned(lin, {"0": "spatial"})
    # the real timer: whatever it measured here, its plan is one decompose_planned takes, and exact
    f32 = copy.deepcopy(model).float()
    measured = plan_recompose(f32, x.float(), reps=1)
    assert set(measured) <= set(names) and set(measured.values()) <= {"spatial", "dense"}
    with torch.no_grad():
        assert rel_err(decompose_planned(model, measured)(x), y) < 1e-12
    # scripted measurements: the spatial form 2x faster on the 64-channel layers only
    _scripted_timer(monkeypatch, lambda out: 0.5 if out.shape[1] == 64 else 1.5)
    plan = plan_recompose(f32, x.float(), reps=1, forms=("decomposed", "spatial"))
    expected = {n: "spatial" for n in names if model.get_submodule(n).out_channels == 64}
    assert expected and len(expected) < len(names)
    assert plan == expected
