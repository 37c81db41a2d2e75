"""The linear algebra of docs/method.md sections 1 and 3, checked against dense-matrix references."""

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


def dense_complement(full, inner):
    """I - A A^+ with A the explicit Kronecker product of the 1-D box bases (any kernel shape)."""
    a = box_matrix(full[0], inner[0])
    for length, l in zip(full[1:], inner[1:]):
        a = torch.kron(a, box_matrix(length, l))
    return torch.eye(a.shape[0], dtype=torch.float64) - a @ torch.linalg.pinv(a)


def dense_relative_residual(w, q):
    """||(I - A A^+) vec(W)|| / ||W|| per output unit row, by plain autograd-visible ops."""
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1) @ q.T) / torch.linalg.vector_norm(w)


# every square-kernel structure with C <= 5, N <= 5: (C, N, c, n)
SMALL_STRUCTURES = [(C, N, c, n) for C in range(1, 6) for N in range(1, 6)
                    for c in range(1, C + 1) for n in range(1, N + 1)]


@pytest.mark.parametrize("channels_last", [False, True])
def test_structural_loss_value_and_gradient_every_small_structure(channels_last):
    """structural_loss (one fused autograd node: folds, channels_last views) against autograd through
    the explicit dense projector, value and gradient, for every (C, N, c, n) with C, N <= 5, in both
    kernel memory formats, plus every StructuredLinear with in_features <= 5. Among them the
    channel-only structures with c = 1 whose fold has the kernel's own shape (C = N, n = N; in
    channels_last order the fold was once taken for a full residual, giving a transposed gradient)."""
    from src.structured import structural_residuals
    from src.structured.basis import layer_residuals

    layers = [StructuredConv2d(C, 2 + i % 2, N, inner_channels=c, inner_kernel_size=n)
              for i, (C, N, c, n) in enumerate(SMALL_STRUCTURES)]
    layers += [StructuredLinear(C, 3, inner_features=c) for C in range(1, 6) for c in range(1, C + 1)]
    model = torch.nn.ModuleList(layers).double()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        convs = model[:len(SMALL_STRUCTURES)]
        assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        assert any(not m.weight.is_contiguous() for m in model)
    loss = structural_loss(model)
    loss.backward()
    values = layer_residuals([m.weight for m in model], [m.inner_shape for m in model]).detach()
    logged = structural_residuals(model)  # the no-grad path
    total = 0.0
    for i, m in enumerate(model):
        w = m.weight.detach().clone().requires_grad_(True)
        ref = dense_relative_residual(w, dense_complement(tuple(w.shape[1:]), m.inner_shape))
        ref.backward()
        total += float(ref.detach())
        what = (type(m).__name__, tuple(w.shape), m.inner_shape, channels_last)
        assert abs(float(values[i]) - float(ref.detach())) < 1e-10, what
        assert abs(logged[str(i)] - float(ref.detach())) < 1e-10, what
        assert m.weight.grad.shape == w.shape
        assert (m.weight.grad - w.grad).abs().max() < 1e-10, what
    assert abs(float(loss.detach()) - total) < 1e-10 * len(model)


def test_constant_caches_filled_under_inference_mode_serve_autograd():
    """The per-(device, dtype) constant caches (axis operators, spatial Kronecker operators, fold
    counts, the sum-pool's ones kernel) first filled inside torch.inference_mode() must hold
    ordinary tensors: a later training step saves them for backward."""
    import copy

    import torch.nn.functional as F

    from src.structured import CPU_SUM_POOL_POLICY
    from src.structured import (DecomposedConv2d, SumPool, decompose, project, structural_residuals, sum_pool_policy,
                                sumpool)
    from src.structured import basis

    basis._DEVICE_CACHE.clear()
    basis._axis_operators_f64.cache_clear()
    sumpool._ONES.clear()
    model = torch.nn.Sequential(
        StructuredConv2d(6, 4, 3, padding=1, inner_channels=3, inner_kernel_size=2),
        StructuredConv2d(4, 4, 1, inner_channels=2, inner_kernel_size=1),
        torch.nn.Flatten(),
        StructuredLinear(4 * 8 * 8, 5, inner_features=7),
    ).double()
    dec = DecomposedConv2d(6, 4, 3, padding=1, inner_channels=3, inner_kernel_size=2).double()
    pool = SumPool(2, 2, 1)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    big = torch.randn(1, 16, 64, 64).to(memory_format=torch.channels_last)  # the ones-kernel path
    layers = [model[0], model[1], model[3]]
    # e.g. a validation pass of a deployed model before the first training step
    with torch.inference_mode(), sum_pool_policy(CPU_SUM_POOL_POLICY):
        structural_loss(model), structural_residuals(model), model(x), dec(x), pool(x), SumPool(1, 2, 1)(big)
        project(copy.deepcopy(model))
        decompose(model, tol=float("inf"))(x)
        for m in layers:
            w = m.weight
            project_weight(w, m.inner_shape), compose(coefficients(w, m.inner_shape), w.shape[1:])
            relative_residual(w, m.inner_shape)
        dec.composed_weight()
    # a training step through every cached operator, against dense references
    loss = structural_loss(model)
    loss.backward()
    for m in layers:
        w = m.weight.detach().clone().requires_grad_(True)
        q = dense_complement(tuple(w.shape[1:]), m.inner_shape)
        dense_relative_residual(w, q).backward()
        assert torch.isfinite(m.weight.grad).all() and (m.weight.grad - w.grad).abs().max() < 1e-10
        full, inner = tuple(w.shape[1:]), m.inner_shape
        a = box_matrix(full[0], inner[0])
        for length, l in zip(full[1:], inner[1:]):
            a = torch.kron(a, box_matrix(length, l))
        g = torch.randn(w.shape[0], a.shape[0], dtype=torch.float64)  # upstream gradient, flat
        w = m.weight.detach().clone().requires_grad_(True)
        (project_weight(w, inner).reshape(len(g), -1) * g).sum().backward()  # grad = P g (P symmetric)
        assert rel_err(w.grad.reshape(len(g), -1), g @ (torch.eye(len(q), dtype=torch.float64) - q).T) < 1e-12
        w.grad = None
        gi = torch.randn(w.shape[0], a.shape[1], dtype=torch.float64)
        (coefficients(w, inner).reshape(len(gi), -1) * gi).sum().backward()  # grad = (A^+)^T gi
        assert rel_err(w.grad.reshape(len(gi), -1), gi @ torch.linalg.pinv(a)) < 1e-12
        alpha = torch.randn(w.shape[0], *inner, dtype=torch.float64, requires_grad=True)
        (compose(alpha, full).reshape(len(g), -1) * g).sum().backward()  # grad = A^T g
        assert rel_err(alpha.grad.reshape(len(g), -1), g @ a) < 1e-12
    # the deploy form trained directly (alpha as the parameter), and the sum-pool, with autograd
    xg = x.clone().requires_grad_(True)
    gy = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    (dec(xg) * gy).sum().backward()
    alpha = dec.conv.weight.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    a = torch.kron(torch.kron(box_matrix(6, 3), box_matrix(3, 2)), box_matrix(3, 2))
    w_ref = (alpha.reshape(4, -1) @ a.T).reshape(4, 6, 3, 3)
    (F.conv2d(xr, w_ref, dec.conv.bias.detach(), padding=1) * gy).sum().backward()
    assert rel_err(dec.conv.weight.grad, alpha.grad) < 1e-12 and rel_err(xg.grad, xr.grad) < 1e-12
    assert torch.autograd.gradcheck(pool, (x[:1, :, :4, :4].clone().requires_grad_(True),), fast_mode=True)
    bigg = big.clone().requires_grad_(True)
    SumPool(1, 2, 1)(bigg).sum().backward()
    assert torch.isfinite(bigg.grad).all()
    # and the caches hold no inference tensor
    assert basis._DEVICE_CACHE and sumpool._ONES
    cached = [t for v in basis._DEVICE_CACHE.values() for t in (v if isinstance(v, tuple) else (v,))]
    assert not any(t.is_inference() for t in cached + list(sumpool._ONES.values()))


@pytest.mark.parametrize("channels_last", [False, True])
def test_one_residual_implementation_for_loss_and_logging(channels_last):
    """The loss's forward and the no-grad residual (logging, relative_residual) are the same code:
    equal bit for bit, in both kernel memory formats; the stacked form (batch_dims=1) and
    residual_weight agree with them and with the dense projector."""
    from src.structured.basis import layer_residuals, residual_weight

    for full, inner in SPECS:
        w = torch.randn(4, 3, *full, dtype=torch.float64)
        if channels_last and len(full) == 3:
            w = w.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, (4, 3))
        # fresh tensors, like the trained ones below (BLAS rounding may depend on alignment)
        values = [relative_residual(w[g].clone(), inner) for g in range(4)]
        trained = layer_residuals([w[g].clone().requires_grad_(True) for g in range(4)], [inner] * 4).detach()
        assert all(torch.equal(v, t) for v, t in zip(values, trained)), (full, inner)
        stacked = relative_residual(w, inner, batch_dims=1)
        assert stacked.shape == (4,) and (stacked - trained).abs().max() < 1e-12
        q = dense_complement(full, inner)
        r = residual_weight(w[0], inner)
        assert (r.reshape(3, -1) - w[0].reshape(3, -1) @ q.T).abs().max() < 1e-12
        assert abs(float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(w[0])) - float(values[0])) < 1e-12


def test_axis_operators_are_named_and_kronecker_factors_match_dense():
    """axis_operators' fields (box, pinv, projector) and the spatial factor the code applies are
    the dense construction's pieces: B, pinv(B), B pinv(B), and kron over the two spatial axes."""
    from src.structured.basis import _factor

    ops = axis_operators(5, 2)
    b = box_matrix(5, 2)
    assert torch.equal(ops.box, b) and ops.box is ops[0]
    assert rel_err(ops.pinv, torch.linalg.pinv(b)) < 1e-14 and rel_err(ops.projector, b @ torch.linalg.pinv(b)) < 1e-14
    ref = torch.zeros(())
    for kind in ("box", "pinv", "projector"):
        spatial = _factor((3, 3), (2, 1), kind, ref.double())
        dense = torch.kron(getattr(axis_operators(3, 2), kind), getattr(axis_operators(3, 1), kind))
        assert torch.equal(spatial, dense), kind
        assert _factor((3, 3), (3, 3), kind, ref) is None
