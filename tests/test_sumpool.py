"""Sum-pooling against a plain loop over windows, in every exact form (each sum-pool policy)."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.structured import sumpool
from src.structured import (CPU_SUM_POOL_POLICY, REFERENCE_SUM_POOL_POLICY, CpuSumPoolPolicy, SumPool, SumPoolPolicy,
                            get_sum_pool_policy, set_sum_pool_policy, sum_pool2d, sum_pool_policy, window_sum)

from .conftest import ROOT, rel_err


class Forced(SumPoolPolicy):
    """Takes the given forms wherever they apply (the reference forms elsewhere), so every exact
    form is checked, whichever a tuned policy would pick."""

    def __init__(self, channel="doubling", pool2x2="padded", export="padded"):
        self.channel, self.pool2x2, self.export = channel, pool2x2, export

    def channel_form(self, x, window, groups):
        return self.channel

    def pool2x2_form(self, x, pads):
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        return self.pool2x2 if symmetric or self.pool2x2 not in ("avg_pool", "ones_conv") else "padded"

    def export_form(self, kernel, pads):
        return self.export


POLICIES = {
    "reference": REFERENCE_SUM_POOL_POLICY,
    "cpu": CPU_SUM_POOL_POLICY,
    "cumsum+pair_adds": Forced("cumsum", "pair_adds"),
    "avg_pool": Forced(pool2x2="avg_pool"),
    "ones_conv": Forced(pool2x2="ones_conv"),
}


@pytest.fixture(params=list(POLICIES))
def policy(request):
    """Each test that takes it runs once per policy (per exact form), the previous policy restored."""
    with sum_pool_policy(POLICIES[request.param]) as p:
        yield p


def loop_window_sum(x, dim, window, dilation=1):
    length = x.size(dim) - dilation * (window - 1)
    return sum(x.narrow(dim, k * dilation, length) for k in range(window))


@pytest.mark.parametrize("window", [1, 2, 3, 5, 7, 8, 13, 33])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_window_sum_matches_loop(window, dilation):
    x = torch.randn(2, 40, 5, dtype=torch.float64)
    if dilation * (window - 1) >= 40:
        with pytest.raises(ValueError):
            window_sum(x, 1, window, dilation)
        return
    assert rel_err(window_sum(x, 1, window, dilation), loop_window_sum(x, 1, window, dilation)) < 1e-13


def reference_sum_pool(x, cw, k, pad4, dil, groups):
    """Group-wise 3-D window sum written as a loop over every tap."""
    x = F.pad(x, pad4)
    b, ch, h, w = x.shape
    cg = ch // groups
    x = x.reshape(b, groups, cg, h, w)
    x = loop_window_sum(x, 2, cw)
    x = loop_window_sum(x, 3, k[0], dil[0])
    x = loop_window_sum(x, 4, k[1], dil[1])
    return x.flatten(1, 2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "ch,cw,k,pad4,dil,groups",
    [
        (8, 5, (2, 2), (1, 1, 1, 1), (1, 1), 1),
        (8, 3, (3, 3), (0, 0, 0, 0), (2, 2), 2),
        (6, 1, (2, 2), (2, 1, 0, 3), (1, 1), 6),
        (12, 4, (1, 1), (0, 0, 0, 0), (1, 1), 3),
        (5, 5, (4, 4), (6, 6, 6, 6), (1, 1), 1),  # padding larger than avg_pool2d allows
    ],
)
def test_sum_pool2d_matches_loop(ch, cw, k, pad4, dil, groups, channels_last, policy):
    x = torch.randn(2, ch, 9, 7, dtype=torch.float64)
    ref = reference_sum_pool(x, cw, k, pad4, dil, groups)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = SumPool(cw, k, pad4, dil, groups)(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-13


def test_sum_pool_is_exact_at_borders(policy):
    # all-ones input, 2x2 window, padding 1: corners see one pixel, edges two, interior four
    out = sum_pool2d(torch.ones(1, 1, 3, 3), 1, 2, padding=1)
    expected = torch.tensor([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)


def test_sum_pool_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        sum_pool2d(torch.randn(1, 5, 4, 4), 2, 2, groups=2)
    with pytest.raises(ValueError, match="4-D"):
        sum_pool2d(torch.randn(5, 4, 4), 2, 2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ch,cw,groups", [(64, 33, 1), (128, 49, 2), (96, 32, 1), (512, 257, 1)])
def test_wide_channel_windows_float32_match_float64_loop(ch, cw, groups, channels_last, policy):
    """Wide channel windows take the cumulative-sum path: float32 must stay within 1e-5 of the
    float64 loop reference (post-ReLU-like positive inputs, the worst case for cancellation)."""
    x64 = torch.rand(2, ch, 6, 5, dtype=torch.float64) * 3
    ref = reference_sum_pool(x64, cw, (2, 2), (1, 1, 1, 1), (1, 1), groups)
    x = x64.float()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = SumPool(cw, 2, 1, 1, groups)(x)
    assert rel_err(out.double(), ref) < 1e-5
    assert float(((out.double() - ref).abs() / ref.abs()).max()) < 1e-5  # also elementwise


def test_inference_and_autograd_paths_agree(policy):
    x = torch.randn(2, 16, 9, 7).to(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = sum_pool2d(x, 5, 2, 1)
    slow = sum_pool2d(x.clone().requires_grad_(True), 5, 2, 1)
    assert rel_err(fast, slow) < 1e-6
    slow.sum().backward()


@pytest.mark.parametrize("pad", [0, 1, (1, 0), (0, 1)])
@pytest.mark.parametrize("shape", [(1, 16, 32, 32), (3, 8, 5, 7), (1, 1, 4, 4)])
def test_sum_pool_module_fast_path_matches_loop(pad, shape, policy):
    """SumPool's one-call 2 x 2 inference path (small channels_last inputs, no autograd) against
    the loop, in both memory formats and with autograd, so a wrong shortcut cannot hide."""
    pool = SumPool(1, 2, pad)
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    x = torch.randn(*shape, dtype=torch.float64)
    ref = loop_window_sum(loop_window_sum(F.pad(x, (pw, pw, ph, ph)), 2, 2), 3, 2)
    for inp in (x, x.to(memory_format=torch.channels_last), x.clone().requires_grad_(True)):
        out = pool(inp)
        assert out.shape == ref.shape and rel_err(out, ref) < 1e-12
        with torch.no_grad():  # the module's fast path is the functional path, bit for bit
            assert torch.equal(pool(inp), sum_pool2d(inp, 1, 2, pad))
    assert pool._pool2x2_pad == (ph, pw)
    with pytest.raises(ValueError, match="4-D"):
        pool(x[0])


def test_policy_is_installed_restored_and_checked():
    """The hook: set / get / context manager; a policy answer whose form does not apply raises
    instead of computing something else."""
    before = get_sum_pool_policy()
    with sum_pool_policy(SumPoolPolicy()) as p:
        assert get_sum_pool_policy() is p
    assert get_sum_pool_policy() is before
    with pytest.raises(TypeError):
        set_sum_pool_policy("fast")
    x = torch.randn(1, 4, 5, 5)
    bad = type("Bad", (SumPoolPolicy,), {"pool2x2_form": lambda self, x, pads: "ones_conv",
                                         "channel_form": lambda self, x, w, g: "scan"})()
    with sum_pool_policy(bad), torch.no_grad():
        with pytest.raises(ValueError, match="does not apply"):
            sum_pool2d(x, 1, 2, (0, 1, 0, 1))  # asymmetric padding: no one-call form
        with pytest.raises(ValueError, match="does not apply"):
            sum_pool2d(x, 2, 1)  # unknown channel form


def test_cpu_policy_choices():
    """The CPU policy (src/structured/sumpool.py, the default) picks the forms measured fastest:
    the thresholds, and a replaced threshold, as documented there."""
    p = CPU_SUM_POOL_POLICY
    assert isinstance(p, CpuSumPoolPolicy) and isinstance(p, SumPoolPolicy)
    sym, asym = (1, 1, 1, 1), (0, 1, 0, 1)
    big = p.small_input
    cl = torch.channels_last
    assert p.channel_form(torch.empty(1, 64, 2, 2), p.cumsum_min_window - 1, 1) == "doubling"
    assert p.channel_form(torch.empty(1, 64, 2, 2), p.cumsum_min_window, 1) == "cumsum"
    few = torch.empty(4, 16, 32, 32).to(memory_format=cl)  # 16 channels, 65,536 elements
    assert few.numel() >= big and p.pool2x2_form(few, sym) == "ones_conv"
    assert p.pool2x2_form(few.double(), sym) == "avg_pool"  # the ones-kernel conv: float32 only
    assert p.pool2x2_form(few[:1], sym) == "avg_pool"  # small input
    assert p.pool2x2_form(torch.empty(1, 64, 32, 32).to(memory_format=cl), sym) == "avg_pool"
    assert p.pool2x2_form(few, asym) == "pair_adds"
    assert p.pool2x2_form(torch.empty(4, 16, 32, 32), sym) == "pair_adds"  # NCHW
    assert p.pool2x2_form(torch.empty(1, 16, 32, 32), sym) == "padded"  # NCHW, small
    assert p.pool2x2_form(torch.empty(64, 1024, 1, 1), sym) == "padded"  # one row
    assert p.export_form((2, 2), sym) == "onnx_average_pool"
    import dataclasses

    tuned = dataclasses.replace(p, avgpool_min_channels=16)
    assert tuned.pool2x2_form(few, sym) == "avg_pool" and p.pool2x2_form(few, sym) == "ones_conv"


_POLICY_PROBE = """
import sys
import torch
from src.structured import decompose, get_sum_pool_policy, project
from src.models import create_model

def forms():
    # the sum-pool forms the installed policy picks for a decomposed struct_resnet20_a, channels_last
    policy, seen = get_sum_pool_policy(), set()
    cls = type(policy)
    originals = {m: getattr(cls, m) for m in ("channel_form", "pool2x2_form", "export_form")}
    for m, f in originals.items():
        setattr(cls, m, lambda self, *a, _f=f, _m=m: seen.add((_m, _f(self, *a))) or _f(self, *a))
    try:
        model = decompose(project(create_model("struct_resnet20_a").eval()), tol=float("inf"))
        model = model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for batch in (1, 8):
                model(torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last))
    finally:
        for m, f in originals.items():
            setattr(cls, m, f)
    return repr(policy), sorted(seen)

core = forms()
assert "src.deploy" not in sys.modules, "importing the core imported src.deploy"
before = get_sum_pool_policy()
import src.deploy  # noqa: E402
assert get_sum_pool_policy() is before, "importing src.deploy changed the sum-pool policy"
print(core == forms(), core)
"""


def test_core_alone_takes_the_fast_forms_and_no_import_changes_them():
    """In a fresh interpreter, ``import src.structured`` alone (src.deploy never imported) installs
    the CPU-fast policy, and a decomposed model takes the same sum-pool forms as after importing
    src.deploy, whose import leaves the policy alone."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _POLICY_PROBE], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    same, _, core = out.stdout.strip().partition(" ")
    assert same == "True", out.stdout
    # the fast 2 x 2 forms (one avg_pool2d or ones-kernel conv), not the reference pads and adds
    assert "CpuSumPoolPolicy" in core and "'avg_pool')" in core and "'ones_conv')" in core, core
    assert "'padded')" not in core, core


def test_default_policy_is_the_cpu_one_and_reference_is_explicit():
    """The core's default is the CPU policy; the reference policy (general forms everywhere) is
    one explicit call away and takes pads and adds where the default takes one call."""
    from unittest import mock

    assert sumpool.DEFAULT_SUM_POOL_POLICY is CPU_SUM_POOL_POLICY
    assert type(REFERENCE_SUM_POOL_POLICY) is SumPoolPolicy
    x = torch.randn(4, 16, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        with sum_pool_policy(REFERENCE_SUM_POOL_POLICY), \
                mock.patch.object(sumpool, "_padded_sum", wraps=sumpool._padded_sum) as padded:
            ref = SumPool(1, 2, 1)(x)
        assert padded.call_count == 1
        with sum_pool_policy(CPU_SUM_POOL_POLICY), \
                mock.patch.object(sumpool, "_padded_sum", wraps=sumpool._padded_sum) as padded:
            fast = SumPool(1, 2, 1)(x)
        assert padded.call_count == 0 and rel_err(fast, ref) < 1e-6


def test_core_never_imports_the_deploy_layer():
    """src/structured consults the deployment tuning only through the policy hook."""
    for path in sorted((ROOT / "src" / "structured").glob("*.py")):
        for node in ast.walk(ast.parse(Path(path).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            level = getattr(node, "level", 0)
            assert not any(n.startswith("src.deploy") or (level >= 2 and n.startswith("deploy")) for n in names), path


def test_deploy_forms_of_a_decomposed_conv_agree_across_policies():
    """A decomposed conv's output does not depend on the policy beyond rounding."""
    from src.structured import StructuredConv2d, decompose

    conv = StructuredConv2d(64, 8, 3, padding=1, inner_channels=16, inner_kernel_size=2).eval()
    dec = decompose(conv, tol=float("inf"))
    x = torch.randn(2, 64, 17, 19)
    outs = {}
    with torch.no_grad():
        for name, pol in POLICIES.items():
            for fmt in (torch.contiguous_format, torch.channels_last):
                with sum_pool_policy(pol):
                    outs[name, fmt] = dec.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
    ref = outs["reference", torch.contiguous_format]
    assert all(rel_err(o, ref) < 1e-5 for o in outs.values())


# ------------------------------------------------------------------ explicit forms (the deploy plan's)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ch,cw,groups", [(8, 5, 1), (12, 3, 2), (6, 6, 1), (16, 1, 4), (64, 40, 1)])
@pytest.mark.parametrize("form", sumpool.CHANNEL_FORMS)
def test_channel_window_sum_every_form_matches_loop(ch, cw, groups, form, channels_last):
    x = torch.randn(2, ch, 5, 4, dtype=torch.float64)
    ref = reference_sum_pool(x, cw, (1, 1), (0, 0, 0, 0), (1, 1), groups)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = sumpool.channel_window_sum(x, cw, groups, form)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-13
    if cw > 1:
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_channel_window_ones_is_the_box_basis_transposed():
    from src.structured import box_matrix

    w = sumpool.channel_window_ones(12, 4, groups=2, dtype=torch.float64)
    assert w.shape == (6, 6, 1, 1)  # per group: 3 outputs, each a window of 4 of the group's 6 channels
    assert torch.equal(w[:3, :, 0, 0], box_matrix(6, 3).T) and torch.equal(w[3:, :, 0, 0], box_matrix(6, 3).T)
    with pytest.raises(ValueError, match="does not fit"):
        sumpool.channel_window_ones(8, 9)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k,pad4,dil", [((2, 2), (1, 1, 1, 1), (1, 1)), ((2, 2), (0, 1, 0, 1), (1, 1)),
                                        ((3, 3), (1, 1, 1, 1), (1, 1)), ((3, 2), (2, 0, 1, 3), (1, 1)),
                                        ((2, 2), (1, 1, 1, 1), (2, 2)), ((4, 4), (0, 0, 0, 0), (1, 1))])
@pytest.mark.parametrize("form", sumpool.SPATIAL_FORMS)
def test_spatial_window_sum_every_form_matches_loop(k, pad4, dil, form, channels_last):
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    ref = reference_sum_pool(x, 1, k, pad4, dil, 1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    symmetric = pad4[0] == pad4[1] and pad4[2] == pad4[3]
    applies = {"padded": True, "depthwise": True, "avg_pool_area": dil == (1, 1),
               "pair_adds": k == (2, 2) and dil == (1, 1) and max(pad4) <= 1}
    applies["avg_pool"] = applies["ones_conv"] = applies["pair_adds"] and symmetric
    if not applies[form]:
        with pytest.raises(ValueError, match=form):
            sumpool.spatial_window_sum(x, k, pad4, dil, form)
        return
    out = sumpool.spatial_window_sum(x, k, pad4, dil, form)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-13


def test_window_mean_times_area_is_the_sum():
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    for k, pad in ((2, 1), (3, 1), (3, (2, 0, 1, 3))):
        ref = sum_pool2d(x, 1, k, pad)
        assert rel_err(sumpool.window_mean2d(x, k, pad) * (k * k), ref) < 1e-13, k


def test_explicit_forms_refuse_where_they_do_not_apply():
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    with pytest.raises(ValueError, match="no autograd"):
        sumpool.spatial_window_sum(x, 2, 1, 1, "pair_adds")
    with pytest.raises(ValueError, match="unknown form"):
        sumpool.spatial_window_sum(x, 2, 1, 1, "scan")
    with pytest.raises(ValueError, match="unknown form"):
        sumpool.channel_window_sum(x, 2, 1, "scan")
    with pytest.raises(ValueError, match="longer than a group"):
        sumpool.channel_window_sum(x, 3, 2, "cumsum")
    # the autograd-safe forms differentiate
    for form in ("padded", "depthwise", "avg_pool_area"):
        sumpool.spatial_window_sum(x, 2, 1, 1, form).sum().backward()
    sumpool.channel_window_sum(x, 3, 1, "ones_conv").sum().backward()


def test_policy_may_answer_the_new_forms():
    """A policy answering "ones_conv" for channels computes the same sums (the policy hook takes
    the new form)."""
    x = torch.randn(2, 12, 6, 5, dtype=torch.float64)
    ref = reference_sum_pool(x, 4, (2, 2), (1, 1, 1, 1), (1, 1), 2)
    with sum_pool_policy(Forced(channel="ones_conv")):
        assert rel_err(sum_pool2d(x, 4, 2, 1, groups=2), ref) < 1e-13
