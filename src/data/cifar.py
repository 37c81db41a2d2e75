"""CIFAR-10: array loading (offline .npz folder or torchvision) and a device-resident loader.

The whole dataset lives as one uint8 tensor on the training device (50,000 x 3 x 32 x 32 =
150 MB); every batch is gathered, converted, normalised, randomly cropped (4-pixel zero padding)
and flipped with batched tensor ops on that device: no per-image Python work, no worker
processes. On CUDA this is the airbench-style GPU-resident loader; on CPU the same ops run on
PyTorch's intra-op threads and keep the cores busy.

The shuffle and augmentation of epoch e are drawn from a generator seeded with (seed, e), so a
run resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
Under DDP each rank takes a disjoint, equally long share of every epoch's permutation.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch

__all__ = ["CifarArrays", "load_cifar10", "CifarLoader", "CIFAR10DataModule", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_HOW_TO_GET = (
    "either a folder with cifar10_train.npz / cifar10_test.npz (uint8 NHWC 'x', int 'y', optional "
    "bool 'lossless'), or torchvision's CIFAR-10 (cifar-10-batches-py/; set data.download=true to "
    "fetch it when online)"
)


@dataclass
class CifarArrays:
    train_x: np.ndarray  # (N, 32, 32, 3) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    test_exact: np.ndarray | None  # bool mask of bit-exact test images (offline copy), else None
    source: str


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"CIFAR-10 file {path} is corrupt or unreadable ({e}); re-create or re-download it") from None


def _check(x: np.ndarray, y: np.ndarray, path: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"{path}: expected 'x' as uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: 'y' has shape {y.shape}, expected ({x.shape[0]},)")
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"{path}: labels outside 0..9")


def load_cifar10(root: str | Path, download: bool = False) -> CifarArrays:
    """Load CIFAR-10 from `root` (see _HOW_TO_GET); raises naming the path on any problem."""
    root = Path(root).expanduser()
    train_npz, test_npz = root / "cifar10_train.npz", root / "cifar10_test.npz"
    if train_npz.exists() or test_npz.exists():
        for p in (train_npz, test_npz):
            if not p.exists():
                raise FileNotFoundError(f"CIFAR-10 folder {root} is incomplete: {p.name} is missing ({_HOW_TO_GET})")
        tr, te = _load_npz(train_npz), _load_npz(test_npz)
        for d, p in ((tr, train_npz), (te, test_npz)):
            if "x" not in d or "y" not in d:
                raise ValueError(f"{p}: expected arrays 'x' and 'y', found {sorted(d)}")
            _check(d["x"], d["y"], str(p))
        exact = te.get("lossless")
        return CifarArrays(tr["x"], tr["y"].astype(np.int64), te["x"], te["y"].astype(np.int64),
                           None if exact is None else exact.astype(bool), f"npz:{root}")
    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise FileNotFoundError(f"no CIFAR-10 found at {root}: expected {_HOW_TO_GET}")
    import torchvision

    try:
        tr = torchvision.datasets.CIFAR10(str(root), train=True, download=download)
        te = torchvision.datasets.CIFAR10(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision's integrity check
        raise ValueError(f"CIFAR-10 at {root} is incomplete or corrupt: {e} ({_HOW_TO_GET})") from None
    return CifarArrays(tr.data, np.asarray(tr.targets, np.int64), te.data, np.asarray(te.targets, np.int64),
                       None, f"torchvision:{root}")


class CifarLoader:
    """Iterable of (x, y) or, with `exact`, (x, y, exact_mask) batches, resident on `device`.

    `epoch_fn` returns the current epoch (the trainer's), which seeds shuffle and augmentation.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, train: bool, device="cpu",
                 seed: int = 0, exact: np.ndarray | None = None, epoch_fn: Callable[[], int] | None = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, drop_last: bool | None = None):
        self.device = torch.device(device)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2)  # N,3,32,32 u8
        self.y = torch.from_numpy(np.asarray(y)).to(self.device)
        self.exact = None if exact is None else torch.from_numpy(np.asarray(exact)).to(self.device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.mean = torch.tensor(CIFAR10_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR10_STD, device=self.device).view(1, 3, 1, 1) * 255

    def _indices(self, gen: torch.Generator | None) -> torch.Tensor:
        n = self.x.shape[0]
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size if self.train else -(-n // self.world_size)
            order = order[self.rank::self.world_size][:per_rank]
        return order

    def __len__(self) -> int:
        n = len(self._indices(None)) if not self.train else self.x.shape[0] // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 9, (b,), generator=gen).to(x.device)
        ar = torch.arange(32, device=x.device)
        rows = (dy[:, None] + ar)[:, None, :, None]  # (b, 1, 32, 1)
        cols = (dx[:, None] + ar)[:, None, None, :]  # (b, 1, 1, 32)
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(3, device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        return torch.where(flip, x.flip(3), x)

    def __iter__(self):
        epoch = int(self.epoch_fn())
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self._indices(gen).to(self.device)
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.x[idx].float()
            if self.train:
                x = self._augment(x, gen)
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.exact is not None:
                yield x, self.y[idx], self.exact[idx]
            else:
                yield x, self.y[idx]


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 for Lightning. The test set doubles as the per-epoch validation set (the
    standard CIFAR protocol has no validation split); only final-epoch figures are reported."""

    task = "classification"
    num_classes = 10
    input_size = (3, 32, 32)

    def __init__(self, root: str, batch_size: int = 128, eval_batch_size: int = 512, download: bool = False,
                 train_subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                 device: str = "auto", channels_last: bool = False):
        super().__init__()
        self.root, self.download = root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_subset, self.test_subset, self.seed = train_subset, test_subset, seed
        self.device_pref, self.channels_last = device, channels_last
        self.arrays: CifarArrays | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is None:
            a = load_cifar10(self.root, self.download)
            if self.train_subset:
                a.train_x, a.train_y = a.train_x[: self.train_subset], a.train_y[: self.train_subset]
            if self.test_subset:
                a.test_x, a.test_y = a.test_x[: self.test_subset], a.test_y[: self.test_subset]
                a.test_exact = None if a.test_exact is None else a.test_exact[: self.test_subset]
            self.arrays = a

    def _device(self) -> torch.device:
        if self.device_pref != "auto":
            return torch.device(self.device_pref)
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _dist(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> CifarLoader:
        rank, world = self._dist()
        a = self.arrays
        return CifarLoader(a.train_x, a.train_y, self.batch_size, train=True, device=self._device(), seed=self.seed,
                           epoch_fn=lambda: self.trainer.current_epoch if self.trainer else 0,
                           rank=rank, world_size=world, channels_last=self.channels_last)

    def test_dataloader(self) -> CifarLoader:
        rank, world = self._dist()
        a = self.arrays
        return CifarLoader(a.test_x, a.test_y, self.eval_batch_size, train=False, device=self._device(),
                           exact=a.test_exact, rank=rank, world_size=world, channels_last=self.channels_last)

    val_dataloader = test_dataloader

    def calibration_batches(self, n: int):
        """Up to n training batches (augmented, epoch-seeded) for BatchNorm recalibration."""
        loader = self.train_dataloader()
        for i, batch in enumerate(loader):
            if i >= n:
                break
            yield batch[0]
