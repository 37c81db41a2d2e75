"""Deploy forms (src/deploy/forms.py) and per-backend deploy plans (src/deploy/tuning.py): every
exact form equals the decomposed layer / model in float64 (<= 1e-10), ONNX Runtime runs them as
PyTorch does (float32), and plan_recompose times each layer's candidates on the backend that
will run it (the timer scripted here: plans are measurements, never asserted)."""

import copy
import itertools
import sys

import numpy as np
import pytest
import torch
from torch import nn

from src.deploy import PLAN_FORMS, LayerForm, decompose_planned, layer_forms, plan_recompose, rewrite_layer
from src.deploy.forms import FixedSumPool, PaddedConv2d, PooledConv2d, plannable_layers, plan_summary
from src.models import create_model
from src.structured import DecomposedConv2d, StructuredConv2d, StructuredLinear, decompose, project, structurize

from .conftest import rel_err
from .test_structurize import randomize_bn

ALL_FORMS = sorted({*itertools.chain(*PLAN_FORMS.values()), "decomposed[ch=cumsum,sp=avg_pool_area]",
                    "decomposed[ch=doubling,sp=pair_adds]", "decomposed[sp=avg_pool]", "decomposed[sp=ones_conv]",
                    "decomposed[sp=padded]", "spatial[sp=avg_pool_area]", "spatial[sp=pair_adds]"})


def test_forms_parse_and_print():
    f = LayerForm.parse("decomposed[ch=ones_conv, sp=mean]")
    assert f == LayerForm("decomposed", "ones_conv", "mean") and str(f) == "decomposed[ch=ones_conv,sp=mean]"
    assert str(LayerForm.parse("dense")) == "dense" and LayerForm.parse(" spatial ").is_default is False
    assert LayerForm.parse("decomposed").is_default and LayerForm.parse(f) is f
    for bad, match in [("sparse", "unknown kind"), ("dense[sp=mean]", "no sum-pool"),
                       ("spatial[ch=ones_conv]", "no channel window"), ("decomposed[ch=scan]", "channel form"),
                       ("decomposed[sp=scan]", "spatial form"), ("decomposed[x=1]", "expected ch="),
                       ("decomposed[ch=cumsum,ch=cumsum]", "expected ch="), ("a b", "cannot read")]:
        with pytest.raises(ValueError, match=match):
            LayerForm.parse(bad)
    assert all(str(LayerForm.parse(f)) == f for f in ALL_FORMS)


# (in, out, kernel, stride, padding, dilation, groups, c, n): 3x3 with channel and spatial structure,
# strided, 'same' with an even kernel (asymmetric padding), dilated, grouped, depthwise, 1x1, spatial only
GEOMETRIES = [
    (12, 8, 3, 1, 1, 1, 1, 6, 2), (12, 8, 3, 2, 1, 1, 1, 9, 2), (6, 5, 4, 1, "same", 1, 1, 4, 3),
    (8, 6, 3, 1, 2, 2, 1, 5, 2), (12, 6, 3, 1, 1, 1, 2, 4, 2), (8, 8, 3, 1, 1, 1, 8, 1, 2),
    (16, 10, 1, 1, 0, 1, 1, 12, 1), (8, 8, 3, 1, 1, 1, 1, 8, 2),
]


def _layer(geometry, bias=True):
    cin, cout, k, s, p, d, g, c, n = geometry
    layer = StructuredConv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias,
                             inner_channels=c, inner_kernel_size=n, dtype=torch.float64)
    layer.project_()
    return layer.eval()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
def test_every_form_of_a_layer_equals_the_decomposed_layer_float64(geometry):
    layer = _layer(geometry)
    dec = decompose(layer)
    x = torch.randn(2, geometry[0], 6, 5, dtype=torch.float64)
    forms = layer_forms(dec, ALL_FORMS)
    assert forms[0].is_default and LayerForm("dense") in forms
    channels_last = geometry in GEOMETRIES[:2]  # (both memory formats on two geometries)
    with torch.no_grad():
        ref = dec(x)
        for fmt in (torch.contiguous_format, torch.channels_last)[:1 + channels_last]:
            xf = x.contiguous(memory_format=fmt)
            source = dec.to(memory_format=fmt)
            for form in forms:
                out = rewrite_layer(source, form)(xf)
                assert out.shape == ref.shape and rel_err(out, ref) <= 1e-10, (form, fmt)
        for form in {f.kind: f for f in forms}.values():  # from the train form too, one form per kind
            assert rel_err(rewrite_layer(layer, form)(x), ref) <= 1e-10, form
    # which forms apply: spatial only with both structures, ch= only with a channel window, ...
    cw, window = dec.pool.channel_window, dec.pool.kernel_size
    kinds = {f.kind for f in forms}
    assert ("spatial" in kinds) == (cw > 1 and window != (1, 1))
    assert any(f.channel for f in forms) == (cw > 1)
    assert any(f.spatial for f in forms) == (window != (1, 1) or any(dec.pool.padding))


def test_form_modules_and_autograd():
    layer = _layer(GEOMETRIES[0])
    dec = decompose(layer)
    pooled = rewrite_layer(dec, "decomposed[ch=ones_conv,sp=mean]")
    assert isinstance(pooled, PooledConv2d) and isinstance(pooled.pool, FixedSumPool)
    assert torch.equal(pooled.conv.weight, dec.conv.weight * 4)  # the 2 x 2 area, folded into alpha
    assert "channel_ones" not in pooled.state_dict() and pooled.pool.channel_ones.shape == (6, 12, 1, 1)
    asym = rewrite_layer(decompose(_layer(GEOMETRIES[2])), "dense")
    assert isinstance(asym, PaddedConv2d)
    rewritten = rewrite_layer(dec, "decomposed[sp=pair_adds]")
    x = torch.randn(1, 12, 6, 6, dtype=torch.float64, requires_grad=True)
    out = rewritten(x)  # autograd: pair_adds falls back to pads and adds
    out.sum().backward()
    assert rel_err(out, dec(x)) <= 1e-12 and x.grad is not None
    with pytest.raises(ValueError, match="does not apply"):
        rewrite_layer(decompose(_layer(GEOMETRIES[6])), "spatial")  # a 1x1 conv has no spatial window
    with pytest.raises(ValueError, match="does not apply"):
        rewrite_layer(decompose(_layer(GEOMETRIES[3])), "decomposed[sp=avg_pool_area]")  # a dilated window
    lin = StructuredLinear(8, 4, inner_features=3, dtype=torch.float64).eval()
    lin.project_()
    assert [str(f) for f in layer_forms(lin, ALL_FORMS)] == ["decomposed", "dense"]
    xl = torch.randn(3, 8, dtype=torch.float64)
    assert rel_err(rewrite_layer(lin, "dense")(xl), decompose(lin)(xl)) <= 1e-12


def _mobilenet_like():
    """Inverted-residual-like: 1x1 expand, depthwise 3x3, 1x1 project, structured as MobileNetV2's
    variant A (depthwise n = 2, 1x1 c = 3/4)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 24, 1), nn.BatchNorm2d(24), nn.ReLU6(),
                          nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU6(),
                          nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    structurize(model, {"rules": [{"type": "conv", "depthwise": True, "n": 2},
                                  {"type": "conv", "kernel_size": 1, "c": 0.75}], "exclude": ["0", "13"]})
    with torch.no_grad():
        randomize_bn(model)
    return project(model.eval())


def _cycled_plan(model, forms):
    """Each layer in the next form of `forms` that applies to it."""
    plan, cycle = {}, itertools.cycle(forms)
    for name, layer in plannable_layers(model):
        applicable = layer_forms(layer, forms)
        for _ in range(len(forms)):
            f = LayerForm.parse(next(cycle))
            if f in applicable:
                plan[name] = str(f)
                break
    return plan


@pytest.mark.parametrize("name", ["struct_resnet20_b", "mobilenet_like"])
def test_planned_models_equal_the_decomposed_model_float64(name):
    model = _mobilenet_like() if name == "mobilenet_like" else project(create_model(name).eval())
    model = model.double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    ref = decompose(model)
    with torch.no_grad():
        y = ref(x)
        for offset, source in enumerate((model, ref)):  # from the train form / the decomposed model
            plan = _cycled_plan(model, ALL_FORMS[offset:] + ALL_FORMS[:offset])
            assert len(set(plan.values())) >= min(4, len(plan))
            assert rel_err(decompose_planned(source, plan)(x), y) <= 1e-10, plan
    assert rel_err(decompose_planned(model, {})(x), y) == 0.0
    with pytest.raises(ValueError, match="names no decomposable layer"):
        decompose_planned(model, {"nope": "dense"})
    if name == "mobilenet_like":  # its first structured layer is a 1x1 conv: no spatial window
        first = next(n for n, _ in plannable_layers(model))
        with pytest.raises(ValueError, match=f"layer '{first}'.*does not apply"):
            decompose_planned(model, {first: "spatial"})


def test_plan_summary_counts_every_layer():
    assert plan_summary({"a": "dense", "b": "spatial[sp=mean]", "c": "dense"}, 5) == [
        ("decomposed", 2), ("dense", 2), ("spatial[sp=mean]", 1)]


def test_onnxruntime_runs_every_form_like_pytorch():
    """Every form ONNX Runtime's plan may pick (and the others that export), one layer each, all
    exported at once as the planner exports them (src/deploy/runtimes.py: export_many_onnx): ONNX
    Runtime's float32 output matches PyTorch's, and the fixed-kernel forms are the nodes they are
    meant to be (no slices, adds or multiplies left)."""
    import onnx

    from src.deploy.runtimes import export_many_onnx, ort_session

    cases = [(GEOMETRIES[0], f) for f in ALL_FORMS if "pair_adds" not in f]  # (pair_adds: traced as pads + adds)
    cases += [(GEOMETRIES[2], "dense"), (GEOMETRIES[2], "spatial[sp=depthwise]"), (GEOMETRIES[5], "decomposed[sp=mean]"),
              (GEOMETRIES[6], "decomposed[ch=ones_conv]"), (GEOMETRIES[4], "decomposed[ch=ones_conv,sp=depthwise]")]
    geometries = list(dict.fromkeys(g for g, _ in cases))
    inputs = [torch.randn(2, g[0], 9, 8) for g in geometries]
    layers = {g: decompose(_layer(g, bias=True)).float() for g in geometries}
    modules = [rewrite_layer(layers[g], f) for g, f in cases]
    graphs = export_many_onnx(modules, inputs, [geometries.index(g) for g, _ in cases])
    for (g, form), module, graph in zip(cases, modules, graphs):
        x = inputs[geometries.index(g)]
        session = ort_session(graph, threads=1)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            assert rel_err(torch.from_numpy(np.asarray(y)), layers[g](x)) <= 1e-5, form
        ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
        if form in ("dense", "decomposed[ch=ones_conv,sp=mean]", "decomposed[ch=ones_conv,sp=depthwise]",
                    "spatial[sp=mean]", "spatial[sp=depthwise]"):
            assert ops <= {"Conv", "AveragePool", "Pad"}, (form, ops)


def test_export_many_onnx_with_one_tensor_as_two_inputs():
    """The planner records one tensor as the input of two layers (a residual block's first conv and
    its downsample conv). Exported side by side, the exporter would merge the two graph inputs and
    the per-module graph would read an input it does not have (struct_resnet18_b's ONNX Runtime plan
    failed so): each graph is valid on its own and computes its module's output."""
    from src.deploy.runtimes import export_many_onnx, ort_session

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    modules = [nn.Conv2d(4, 6, 3, padding=1).eval(), nn.Conv2d(4, 6, 1, stride=2).eval(), nn.Conv2d(4, 3, 1).eval()]
    graphs = export_many_onnx(modules, [x, x, x[:1]], [0, 1, 2])
    for module, graph, inp in zip(modules, graphs, (x, x, x[:1])):
        session = ort_session(graph, threads=1)
        (y,) = session.run(None, {session.get_inputs()[0].name: inp.numpy()})
        with torch.no_grad():
            assert rel_err(torch.from_numpy(np.asarray(y)), module(inp)) <= 1e-5


def _scripted_timer(monkeypatch, times, model_times=None):
    """Replace the timer of plan_recompose: run every candidate once, check that they agree with
    the first one, and report times[form] (1.0 for forms not listed) for the forms in the order
    the planner passes them, recorded in `seen`; whole-model candidates (refine: logits out) get
    `model_times` in the order they come."""
    seen = []

    def timer(fns, reps=20, warmup=3, min_time=0.0):
        outs = [fn() for fn in fns]
        outs = [torch.as_tensor(np.asarray(o[0] if isinstance(o, list) else o)) for o in outs]
        assert all(rel_err(o, outs[0]) <= 1e-5 for o in outs[1:])
        if outs[0].dim() == 2:  # the whole model
            seen.append(("models", len(outs)))
            return model_times[:len(outs)]
        forms = seen[-1]
        return [times.get(str(f), 1.0) for f in forms]

    tuning = sys.modules[plan_recompose.__module__]
    monkeypatch.setattr(tuning, "time_interleaved", timer)
    real = tuning.layer_forms

    def recording(layer, forms):
        out = real(layer, forms)
        seen.append(sorted(out, key=lambda f: not f.is_default))
        return out

    monkeypatch.setattr(tuning, "layer_forms", recording)
    return seen


def _tiny():
    from src.bench.measure import build

    return project(build("tiny_resnet", "a").eval())


@pytest.mark.parametrize("backend", ["eager", pytest.param("compile", marks=pytest.mark.slow), "onnxruntime"])
def test_plan_times_each_group_once_on_its_backend(monkeypatch, backend):
    """The two 3x3 convs of the tiny model have one signature: one group, timed once (candidates
    compiled / exported and run on the backend, checked equal), both layers get its best form;
    a form faster by less than the margin leaves them decomposed. (compile: slow, for its
    compilations; the default suite runs the compile plan path in the quick benchmark,
    tests/test_bench_models_smoke.py.)"""
    model = _tiny()
    x = torch.randn(2, 3, 16, 16)
    if backend == "compile":
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    forms = ("decomposed", "dense", "decomposed[sp=mean]")
    seen = _scripted_timer(monkeypatch, {"decomposed[sp=mean]": 0.5, "dense": 0.8})
    plan = plan_recompose(model, x, backend=backend, reps=1, forms=forms)
    assert len(seen) == 1 and [str(f) for f in seen[0]] == list(forms)
    assert plan == {"body.2": "decomposed[sp=mean]", "body.5": "decomposed[sp=mean]"}
    if backend == "eager":  # within the 5 % margin: left decomposed
        _scripted_timer(monkeypatch, {"dense": 0.97})
        assert plan_recompose(model, x, backend=backend, reps=1, forms=forms) == {}
    if backend != "compile":  # refine: the whole model with the plan, none, and each form everywhere
        seen = _scripted_timer(monkeypatch, {"decomposed[sp=mean]": 0.5, "dense": 0.8}, [1.0, 1.2, 0.5])
        refined = plan_recompose(model, x, backend=backend, reps=1, forms=forms, refine=True)
        assert seen[-1] == ("models", 3)  # per-layer plan, no plan, all dense (all sp=mean = the plan)
        assert refined == {"body.2": "dense", "body.5": "dense"}


def test_plan_arguments_and_real_eager_plan():
    model = _tiny()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown backend"):
        plan_recompose(model, x, backend="tvm")
    with pytest.raises(ValueError, match="must include 'decomposed'"):
        plan_recompose(model, x, forms=("dense",))
    measured = plan_recompose(model, x, reps=1, forms=PLAN_FORMS["eager"])  # real timing: any plan, exact
    assert set(measured) <= {"body.2", "body.5"}
    dec = decompose(model)
    with torch.no_grad():
        assert rel_err(decompose_planned(model, measured)(x), dec(x)) <= 1e-5
    # an already decomposed model plans the same layers (a deploy artifact has no train form)
    assert set(plan_recompose(dec, x, reps=1, forms=("decomposed", "dense"))) <= {"body.2", "body.5"}
    assert copy.deepcopy(measured) == measured
