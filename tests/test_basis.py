"""The linear algebra of METHOD.md section 1, checked against dense-matrix references."""

import itertools

import pytest
import torch

from src.structured import (
    StructuredConv2d,
    StructuredLinear,
    box_matrix,
    coefficients,
    compose,
    project_weight,
    relative_residual,
    structural_loss,
)
from src.structured.basis import _axis_operators_f64, axis_operators

from .conftest import rel_err


def dense_composition_matrix(C, c, N, n):
    """A = B(C,c) (x) B(N,n) (x) B(N,n) built explicitly (the thing the library never builds)."""
    return torch.kron(torch.kron(box_matrix(C, c), box_matrix(N, n)), box_matrix(N, n))


def test_box_matrix_columns_are_shifted_boxes():
    b = box_matrix(5, 3)
    assert b.shape == (5, 3)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.float64)
    assert torch.equal(b, expected)
    assert torch.linalg.matrix_rank(b) == 3
    with pytest.raises(ValueError):
        box_matrix(3, 4)


@pytest.mark.parametrize("C,c,N,n", [(4, 2, 3, 2), (6, 6, 3, 1), (3, 1, 5, 3), (1, 1, 3, 2), (8, 3, 1, 1)])
def test_projection_matches_dense_reference(C, c, N, n):
    w = torch.randn(7, C, N, N, dtype=torch.float64)
    a = dense_composition_matrix(C, c, N, n)
    p = a @ torch.linalg.pinv(a)
    ref = (w.reshape(7, -1) @ p.T).reshape_as(w)
    assert rel_err(project_weight(w, (c, n, n)), ref) < 1e-12
    # residual of a random kernel equals the dense-matrix reference
    ref_res = torch.linalg.vector_norm(w.reshape(7, -1) - ref.reshape(7, -1)) / torch.linalg.vector_norm(w)
    assert abs(float(relative_residual(w, (c, n, n))) - float(ref_res)) < 1e-12
    # coefficients equal A^+ vec(W) and compose equals A alpha
    alpha = coefficients(w, (c, n, n))
    ref_alpha = (w.reshape(7, -1) @ torch.linalg.pinv(a).T).reshape(7, c, n, n)
    assert rel_err(alpha, ref_alpha) < 1e-12
    assert rel_err(compose(alpha, (C, N, N)), ref) < 1e-12


@pytest.mark.parametrize("C,c,N,n", [(5, 2, 3, 2), (4, 1, 5, 2), (16, 8, 3, 3)])
def test_projection_idempotent_and_orthogonal(C, c, N, n):
    w = torch.randn(3, C, N, N, dtype=torch.float64)
    inner = (c, n, n)
    pw = project_weight(w, inner)
    assert rel_err(project_weight(pw, inner), pw) < 1e-12  # P P = P
    r = w - pw
    # the residual is orthogonal to every structured kernel (P is symmetric)
    assert abs(float((r * pw).sum())) < 1e-10 * float(w.square().sum())
    v = torch.randn_like(w)
    assert abs(float((project_weight(v, inner) * w).sum() - (v * pw).sum())) < 1e-10


@pytest.mark.parametrize("C,c,N,n", [(5, 2, 3, 2), (3, 3, 5, 1), (2, 1, 1, 1)])
def test_structured_kernel_has_zero_residual(C, c, N, n):
    alpha = torch.randn(4, c, n, n, dtype=torch.float64)
    w = compose(alpha, (C, N, N))
    assert float(relative_residual(w, (c, n, n))) < 1e-14
    assert rel_err(coefficients(w, (c, n, n)), alpha) < 1e-12
    # the composed kernel is a sum of shifted boxes: entry counts follow the box geometry
    ones = compose(torch.ones(1, c, n, n, dtype=torch.float64), (C, N, N))
    assert float(ones.sum()) == c * n * n * (C - c + 1) * (N - n + 1) ** 2


def test_random_kernel_residual_strictly_between_0_and_1():
    w = torch.randn(8, 16, 3, 3)
    r = float(relative_residual(w, (8, 2, 2)))
    assert 0.5 < r < 1.0  # most of a random kernel lies outside the structured subspace


def test_structural_loss_gradcheck_float64():
    model = torch.nn.ModuleList([
        StructuredConv2d(6, 3, 3, inner_channels=3, inner_kernel_size=2).double(),
        StructuredLinear(7, 2, inner_features=4).double(),
    ])

    class Loss(torch.nn.Module):  # lets functional_call substitute the weights
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self):
            return structural_loss(self.m)

    wrapper = Loss()

    def loss_of(wc, wl):
        return torch.func.functional_call(wrapper, {"m.0.weight": wc, "m.1.weight": wl}, ())

    wc = torch.randn(3, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    wl = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_of, (wc, wl))
    expected = relative_residual(wc, (3, 2, 2)) + relative_residual(wl, (4,))
    assert abs(float((loss_of(wc, wl) - expected).detach())) < 1e-14
    loss = structural_loss(model)
    loss.backward()
    assert model[0].weight.grad.abs().sum() > 0 and model[1].weight.grad.abs().sum() > 0


def test_loss_is_scale_invariant_and_zero_after_projection():
    conv = StructuredConv2d(8, 4, 3, inner_channels=4, inner_kernel_size=2).double()
    before = float(structural_loss(conv).detach())
    with torch.no_grad():
        conv.weight.mul_(13.0)
    assert abs(float(structural_loss(conv).detach()) - before) < 1e-12
    conv.project_()
    assert float(structural_loss(conv).detach()) < 1e-14


def test_axis_operators_cached_per_device_and_dtype():
    a = axis_operators(5, 3, "cpu", torch.float32)
    assert axis_operators(5, 3, "cpu", torch.float32) is a
    assert a[0].dtype == torch.float32
    assert _axis_operators_f64.cache_info().currsize >= 1


@pytest.mark.parametrize("C,c", [(C, c) for C, c in itertools.product([1, 4, 9], [1, 2, 4]) if c <= C])
def test_linear_projection_reference(C, c):
    w = torch.randn(5, C, dtype=torch.float64)
    b = box_matrix(C, c)
    ref = w @ (b @ torch.linalg.pinv(b)).T
    assert rel_err(project_weight(w, (c,)), ref) < 1e-12


def test_grouped_loss_equals_sum_of_layer_residuals():
    layers = [StructuredConv2d(8, 8, 3, inner_channels=4, inner_kernel_size=2).double() for _ in range(3)]
    layers += [StructuredConv2d(8, 16, 3, inner_channels=2, inner_kernel_size=1).double(),
               StructuredLinear(10, 3, inner_features=5).double()]
    model = torch.nn.ModuleList(layers)
    expected = sum(relative_residual(m.weight, m.inner_shape) for m in layers)
    loss = structural_loss(model)
    assert abs(float(loss.detach() - expected.detach())) < 1e-13
    loss.backward()
    for m in layers:
        w = m.weight.detach().clone().requires_grad_(True)
        relative_residual(w, m.inner_shape).backward()
        assert torch.allclose(m.weight.grad, w.grad, rtol=1e-10, atol=1e-14)


def test_structural_residuals_per_layer_names():
    from src.structured import project, structural_residuals

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        StructuredConv2d(4, 4, 3, inner_channels=2, inner_kernel_size=2),
        StructuredConv2d(4, 4, 1, inner_channels=2, inner_kernel_size=1),
    )
    res = structural_residuals(model)
    assert list(res) == ["1", "2"] and all(0.0 < v < 1.0 for v in res.values())
    assert abs(sum(res.values()) - float(structural_loss(model).detach())) < 1e-6
    project(model)
    assert all(v < 1e-6 for v in structural_residuals(model).values())


@pytest.mark.parametrize("C", [1, 2, 5, 8, 13, 32])
def test_null_project_equals_dense_complement_projector(C):
    """The O(C) fold of null_project == (I - B B^+) built from pinv, for every inner size."""
    from src.structured.basis import null_project

    for c in range(1, C + 1):
        b = box_matrix(C, c)
        q = torch.eye(C, dtype=torch.float64) - b @ torch.linalg.pinv(b)
        x = torch.randn(4, C, 3, dtype=torch.float64)
        ref = torch.einsum("ij,ajk->aik", q, x)
        assert (null_project(x, C, c, dim=1) - ref).abs().max() < 1e-12, (C, c)


SPECS = [((5, 3, 3), (3, 2, 2)), ((6, 3, 3), (6, 2, 2)), ((6, 1, 1), (2, 1, 1)), ((9, 1, 1), (5, 1, 1)),
         ((7,), (3,)), ((8, 3, 3), (8, 3, 3)), ((9, 5, 5), (4, 5, 5)), ((4, 2, 2), (1, 1, 1)),
         ((10, 4, 4), (3, 1, 3)), ((6, 4, 4), (6, 1, 3)), ((1, 3, 3), (1, 2, 2))]


@pytest.mark.parametrize("channels_last", [False, True])
def test_structural_loss_value_and_gradient_match_dense_reference(channels_last):
    """layer_residuals (folds, fused backward, channels_last views) against plain autograd through
    the explicit Kronecker projector, for a mix of conv and linear shapes."""
    from src.structured.basis import layer_residuals

    torch.manual_seed(0)
    weights, inners, refs = [], [], []
    for full, inner in SPECS:
        w = torch.randn(3, *full, dtype=torch.float64)
        if channels_last and len(full) == 3:
            w = w.to(memory_format=torch.channels_last)
        weights.append(w.requires_grad_(True))
        inners.append(inner)
        if len(full) == 3:
            a = dense_composition_matrix(full[0], inner[0], full[1], inner[1])
            if inner[1:] != (inner[1], inner[1]):  # non-square inner kernel
                a = torch.kron(torch.kron(box_matrix(full[0], inner[0]), box_matrix(full[1], inner[1])),
                               box_matrix(full[2], inner[2]))
        else:
            a = box_matrix(full[0], inner[0])
        refs.append(torch.eye(a.shape[0], dtype=torch.float64) - a @ torch.linalg.pinv(a))
    coef = torch.randn(len(weights), dtype=torch.float64)
    got = layer_residuals(weights, inners)
    ref = torch.stack([torch.linalg.vector_norm(w.reshape(3, -1) @ q.T) / torch.linalg.vector_norm(w)
                       for w, q in zip(weights, refs)])
    assert (got - ref).abs().max() < 1e-12
    g_got = torch.autograd.grad((got * coef).sum(), weights)
    g_ref = torch.autograd.grad((ref * coef).sum(), weights)
    for w, a, b in zip(weights, g_got, g_ref):
        assert a.shape == w.shape
        assert (a - b).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda *ws: layer_residuals(list(ws), inners), tuple(weights))


def test_structural_loss_zero_kernel_has_zero_loss_and_gradient():
    conv = StructuredConv2d(6, 4, 1, inner_channels=3, inner_kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
    loss = structural_loss(conv)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().max() == 0


def test_structural_loss_is_full_precision_under_autocast():
    """Mixed-precision training (bf16 autocast) must not lower the loss's precision: a bf16 matmul
    would leave a ~1e-3 residual floor on a projected kernel."""
    conv = StructuredConv2d(16, 8, 3, inner_channels=8, inner_kernel_size=2)
    conv.project_()
    ref = float(structural_loss(conv).detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = structural_loss(conv)
        loss.backward()
    assert loss.dtype == torch.float32 and abs(float(loss.detach()) - ref) < 1e-6
    assert float(loss.detach()) < 1e-5 and conv.weight.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert float(conv.structural_residual()) < 1e-5  # the logging path too
