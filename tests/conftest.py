import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist each worker gets one intra-op thread: two workers x two OpenMP threads on
# a 2-core machine spin against each other and run many times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# The real CIFAR-10, where a machine has it: CIFAR_ROOT (the variable the configs read), else data/cifar10.
REAL_CIFAR = Path(os.environ.get("CIFAR_ROOT") or ROOT / "data" / "cifar10")
HAS_REAL_CIFAR = (REAL_CIFAR / "cifar10_train.npz").exists() or (REAL_CIFAR / "cifar-10-batches-py").is_dir()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cifar_npz(tmp_path_factory) -> Path:
    """A generated CIFAR-10 in the offline npz layout (1,000 train / 300 test, learnable)."""
    from src.data import make_cifar10_fixture

    return make_cifar10_fixture(tmp_path_factory.mktemp("cifar_npz"), "npz", n_train=1000, n_test=300)


@pytest.fixture(scope="session")
def cifar_torchvision(tmp_path_factory) -> Path:
    """The same kind of fixture in torchvision's cifar-10-batches-py layout."""
    from src.data import make_cifar10_fixture

    return make_cifar10_fixture(tmp_path_factory.mktemp("cifar_tv"), "torchvision", n_train=1000, n_test=300)


@pytest.fixture(params=["fixture-npz", "fixture-torchvision"] + (["real"] if HAS_REAL_CIFAR else []))
def cifar_any(request) -> Path:
    """Every CIFAR-10 source this machine has: both generated layouts always, and the real data
    set in addition where it is present (CIFAR_ROOT or data/cifar10)."""
    if request.param == "real":
        return REAL_CIFAR
    return request.getfixturevalue("cifar_npz" if request.param == "fixture-npz" else "cifar_torchvision")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the relative error used by every exactness test."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
