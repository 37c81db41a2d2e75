"""Sum-pooling against a plain loop over windows."""

import pytest
import torch
import torch.nn.functional as F

from src.structured import SumPool, sum_pool2d, window_sum

from .conftest import rel_err


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
def test_sum_pool2d_matches_loop(ch, cw, k, pad4, dil, groups, channels_last):
    x = torch.randn(2, ch, 9, 7, dtype=torch.float64)
    ref = reference_sum_pool(x, cw, k, pad4, dil, groups)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = SumPool(cw, k, pad4, dil, groups)(x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-13


def test_sum_pool_is_exact_at_borders():
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
def test_wide_channel_windows_float32_match_float64_loop(ch, cw, groups, channels_last):
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


def test_inference_and_autograd_paths_agree():
    x = torch.randn(2, 16, 9, 7).to(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = sum_pool2d(x, 5, 2, 1)
    slow = sum_pool2d(x.clone().requires_grad_(True), 5, 2, 1)
    assert rel_err(fast, slow) < 1e-6
    slow.sum().backward()


@pytest.mark.parametrize("pad", [0, 1, (1, 0), (0, 1)])
@pytest.mark.parametrize("shape", [(1, 16, 32, 32), (3, 8, 5, 7), (1, 1, 4, 4)])
def test_sum_pool_module_fast_path_matches_loop(pad, shape):
    """SumPool's one-call 2 x 2 inference path (small channels_last inputs, no autograd) against
    the loop, in both memory formats and with autograd, so a wrong shortcut cannot hide."""
    pool = SumPool(1, 2, pad)
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    x = torch.randn(*shape, dtype=torch.float64)
    ref = loop_window_sum(loop_window_sum(F.pad(x, (pw, pw, ph, ph)), 2, 2), 3, 2)
    for inp in (x, x.to(memory_format=torch.channels_last), x.clone().requires_grad_(True)):
        out = pool(inp)
        assert out.shape == ref.shape and rel_err(out, ref) < 1e-12
    assert pool._avg_pad == (ph, pw)
    with pytest.raises(ValueError, match="4-D"):
        pool(x[0])
