"""`python -m src.bench --quick` runs end to end and writes a well-formed report (its numbers are
measurements, never asserted); the deploy plan its "+plan" rows use and the fast sum-pool paths
it times (taken only by inputs larger than tests/test_sumpool.py's) are exact."""

import re
from unittest import mock

import pytest
import torch

from src import provenance
from src.bench import models
from src.models import create_model
from src.structured import DecomposedConv2d, StructuredConv2d, StructuredLinear, decompose, project, sumpool
from src.structured.ops import plan_recompose

from .conftest import rel_err
from .test_sumpool import reference_sum_pool


def test_model_benchmark_quick_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(provenance, "git_sha", lambda: "0123abc")  # (other commits may land meanwhile)
    out = tmp_path / "speed.md"
    report = models.main(["--quick", "--threads", "1", "--malloc", "default", "--out", str(out)])
    assert out.read_text() == report
    assert "time ratio" in capsys.readouterr().out
    assert report.startswith("# Speed: dense baselines vs decomposed structured models")
    assert re.search(r"Machine: .*, 1 threads, torch .*glibc malloc", report)
    assert "code at git `0123abc`" in report
    rows = [line for line in report.splitlines() if line.startswith("| resnet20 | 32x32 | 2 | eager_cl |")]
    assert [r.split(" | ")[4].split(" ")[0] for r in rows] == ["a", "a+plan"]
    for row in rows:
        cells = row.strip("|").split("|")
        assert len(cells) == len(models.ROW_HEADER[0].strip("|").split("|"))
        ratio, mac_ratio = float(cells[-2].strip(" *")), float(cells[-1])
        assert ratio > 0 and 0 < mac_ratio <= 1
    for section in ("## Models", "## Layer level", "## Training speed", "## Profile"):
        assert section in report
    assert "| resnet20 | 8 |" in report  # the training row
    assert "| sum-pool |" in report and "| small conv (alpha) |" in report


def test_deploy_plan_rows_time_the_same_function():
    model = project(create_model("struct_resnet20_a").eval())
    x = torch.randn(2, 3, 32, 32)
    every = [name for name, m in model.named_modules() if isinstance(m, StructuredConv2d)]
    assert set(plan_recompose(model, x, reps=1)) <= set(every)
    half = every[::2]
    mixed = decompose(model, recompose=half)  # re-composed layers: one conv, the projected 3x3 kernel
    for n in every:
        layer = mixed.get_submodule(n)
        if n in half:
            assert isinstance(layer, torch.nn.Conv2d) and not isinstance(layer, DecomposedConv2d), n
            assert layer.kernel_size == (3, 3), n
        else:
            assert isinstance(layer, DecomposedConv2d), n
    with torch.no_grad():
        assert rel_err(mixed(x), decompose(model)(x)) <= 1e-5
    with pytest.raises(ValueError, match="no structured layer"):
        decompose(model, recompose=["fc"])
    with pytest.raises(ValueError, match="exclude each other"):
        decompose(model, recompose=half, reinit=True)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("cw,groups,pad4", [(1, 1, (1, 1, 1, 1)), (1, 1, (0, 1, 0, 1)), (3, 2, (1, 0, 1, 0)),
                                            (40, 1, (0, 0, 0, 0)), (33, 2, (1, 1, 1, 1))])  # cw >= 32: cumsum
def test_sum_pool_fast_paths_are_exact(cw, groups, pad4, channels_last):
    """The inference paths the benchmark times (add passes into a preallocated output on inputs
    of >= SMALL_INPUT elements, cumulative-sum channel windows) against a loop over every tap,
    and the autograd path on the same input."""
    x = torch.randn(2, 80, 45, 47, dtype=torch.float64)
    ref = reference_sum_pool(x, cw, (2, 2), pad4, (1, 1), groups)
    assert ref.numel() >= sumpool.SMALL_INPUT  # (the channel window shrinks the tensor first)
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
    """The channels_last 2 x 2 inference paths in float32 (depthwise ones-kernel conv below
    AVGPOOL_MIN_CHANNELS, avg_pool2d from it on, avg_pool2d for small inputs) against the float64
    loop; and the module fast path equals the functional one."""
    for batch in (1, 8):
        x = torch.randn(batch, channels, 33, 31, dtype=torch.float64)
        ref = reference_sum_pool(x, 1, (2, 2), (1, 1, 1, 1), (1, 1), 1)
        xc = x.float().to(memory_format=torch.channels_last)
        with torch.no_grad():
            out = sumpool.sum_pool2d(xc, 1, 2, 1)
            assert torch.equal(sumpool.SumPool(1, 2, 1)(xc), out)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert out.shape == ref.shape and rel_err(out.double(), ref) < 1e-6


def test_deploy_forms_are_exact_and_validated():
    """Every deploy form of a channel- and space-structured model computes the same function;
    the spatial form holds B(C, c) alpha over all channels; bad forms name the layer."""
    model = project(create_model("struct_resnet20_b").eval()).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    names = [name for name, m in model.named_modules() if isinstance(m, StructuredConv2d)]
    ref = decompose(model)
    with torch.no_grad():
        y = ref(x)
        for form in ("spatial", "dense"):
            other = decompose(model, recompose={n: form for n in names})
            assert rel_err(other(x), y) < 1e-12, form
    spatial = decompose(model, recompose={names[0]: "spatial"})
    layer = spatial.get_submodule(names[0])
    assert isinstance(layer, DecomposedConv2d) and layer.pool.channel_window == 1
    assert layer.conv.weight.shape[1] == model.get_submodule(names[0]).in_channels  # all channels
    with pytest.raises(ValueError, match="unknown deploy form"):
        decompose(model, recompose={names[0]: "sparse"})
    lin = torch.nn.Sequential(StructuredLinear(8, 4, inner_features=3))
    with pytest.raises(ValueError, match="'0'.*no spatial axes"):
        decompose(lin, recompose={"0": "spatial"})
    plan = plan_recompose(model.float(), x.float(), reps=1)
    assert set(plan) <= set(names) and set(plan.values()) <= {"spatial", "dense"}
