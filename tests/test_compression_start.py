"""experiments/compression_start.py: the kernel error it reports for each method equals the one
computed independently (singular values discarded; filter energy removed; the structural residual),
and its BatchNorm re-estimation only touches running statistics."""

import torch
from torch import nn

from experiments.compression_start import kernel_errors, recalibrated
from src.compress import compress
from src.models import create_model
from src.structured import relative_residual, structured_layers

SIZE = (3, 32, 32)


def _dense():
    torch.manual_seed(0)
    model = create_model("resnet20").double()
    for m in model.modules():  # trained-like spectra: not all singular values equal
        if isinstance(m, nn.Conv2d):
            m.weight.data *= torch.linspace(0.2, 2.0, m.out_channels, dtype=torch.float64).view(-1, 1, 1, 1)
    return model.eval()


def _convs(model):
    return [m for name, m in model.named_modules() if name.endswith(("conv1", "conv2")) and "layer" in name]


def _discarded(matrix: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(matrix)
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())


def test_svd_kernel_errors_are_the_discarded_singular_values():
    dense = _dense()
    for method, arrange in (("svd_weight", lambda w: w.reshape(w.shape[0], -1)),
                            ("svd_spatial", lambda w: w.permute(1, 2, 0, 3).reshape(w.shape[1] * 3, w.shape[0] * 3))):
        model = compress(dense, method, 0.5, SIZE)
        ranks = [None if u == "dense" else u["rank"] for u in model.compress_info["layers"].values()]
        expected = [0.0 if r is None else _discarded(arrange(c.weight.detach()), r) for c, r in zip(_convs(dense), ranks)]
        got = kernel_errors(method, dense, model)
        assert len(got) == len(expected) == 18
        assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6), (method, got, expected)
        assert max(got) > 0.05  # ratio 0.5 truncates


def test_prune_kernel_error_is_the_energy_of_the_removed_filters():
    dense = _dense()
    model = compress(dense, "prune_l1", 0.5, SIZE)
    got = kernel_errors("prune_l1", dense, model)
    expected = []
    for name, m in dense.named_modules():
        if name.endswith("conv1") and "layer" in name:
            w = m.weight.detach()
            keep = model.get_submodule(name).out_channels
            order = w.abs().sum(dim=(1, 2, 3)).argsort(descending=True)
            removed = w[order[keep:]]
            expected.append(float(removed.square().sum().sqrt() / w.square().sum().sqrt()))
    assert len(got) == 9 and torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)


def test_structured_kernel_error_is_the_relative_residual():
    dense = _dense()
    model = compress(dense, "structured", 0.5, SIZE)
    got = kernel_errors("structured", dense, model)
    expected = [float(relative_residual(layer.weight.detach(), layer.inner_shape))
                for _, layer in structured_layers(model)]
    assert len(got) == 18 and torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)


def test_recalibration_changes_only_batchnorm_statistics():
    dense = _dense()
    batches = [torch.randn(8, 3, 32, 32, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    new = recalibrated(dense, batches)
    before, after = dense.state_dict(), new.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert not new.training
