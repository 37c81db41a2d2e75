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

import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch

from .errors import CorruptFileError, DataRootError

__all__ = ["CifarArrays", "load_cifar10", "read_cifar_batches", "download_cifar10", "CIFAR10_URL", "CIFAR10_MD5", "CifarLoader", "CIFAR10DataModule", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# torchvision's source of CIFAR-10 (the "python version" archive) and its published MD5.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
DOWNLOAD_MODES = ("auto", "true", "false")

_LAYOUTS = (
    "either cifar10_train.npz + cifar10_test.npz (uint8 NHWC 'x', int 'y', optional bool "
    "'lossless'), or torchvision's cifar-10-batches-py/ folder"
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
        raise CorruptFileError(f"CIFAR-10 file {path} is corrupt or unreadable ({e}); re-create or "
                               f"re-download it") from None


def _check(x: np.ndarray, y: np.ndarray, path: str) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise CorruptFileError(f"{path}: expected 'x' as uint8 (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise CorruptFileError(f"{path}: 'y' has shape {y.shape}, expected ({x.shape[0]},)")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise CorruptFileError(f"{path}: labels outside 0..9")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch of torchvision's layout: 'data' (N, 3072) uint8 in channel-major
    order, 'labels' (N,). Returns (N, 32, 32, 3) uint8 and int64 labels."""
    if not path.is_file():
        raise DataRootError(f"CIFAR-10 folder {path.parent} is incomplete: {path.name} is missing")
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64)
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except Exception as e:  # pickle reports damage as many exception types
        raise CorruptFileError(f"CIFAR-10 batch {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
                               f"delete {path.parent} and download again") from None
    _check(x, labels, str(path))
    return np.ascontiguousarray(x), labels


def read_cifar_batches(folder: str | Path) -> CifarArrays:
    """CIFAR-10 from torchvision's on-disk layout (data_batch_1..5, test_batch)."""
    folder = Path(folder)
    train = [_read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _read_batch(folder / TEST_BATCH)
    return CifarArrays(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                       test_x, test_y, None, f"torchvision:{folder.parent}")


def _download_mode(download) -> str:
    mode = str(download).lower()
    if mode not in DOWNLOAD_MODES:
        raise ValueError(f"data.download={download!r}: expected auto, true or false")
    return mode


def download_cifar10(root: str | Path, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5) -> Path:
    """Fetch torchvision's CIFAR-10 archive from `url` into `root`, verify its MD5 and extract it
    (root/cifar-10-batches-py/). Raises DataRootError with what to do when it fails."""
    from torchvision.datasets.utils import check_integrity, download_url, extract_archive

    root = Path(root).expanduser().resolve()
    archive = root / ARCHIVE_NAME
    created = [d for d in (root, *root.parents) if not d.exists()]  # removed again if the fetch fails
    print(f"CIFAR-10 not found at {root}: downloading {url} -> {archive}", flush=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not check_integrity(str(archive), md5):
            download_url(url, str(root), ARCHIVE_NAME, md5=None)
        if not check_integrity(str(archive), md5):
            got = hashlib.md5(archive.read_bytes()).hexdigest() if archive.exists() else "no file"
            archive.unlink(missing_ok=True)
            raise RuntimeError(f"MD5 mismatch: expected {md5}, got {got}")
        extract_archive(str(archive), str(root))
    except Exception as e:  # urllib, socket, tarfile and torchvision report failures many ways
        reason = str(e).strip() or type(e).__name__
        for folder in created:  # innermost first; only folders this call made and left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise DataRootError(_not_found(root, f"downloading it failed ({reason})")) from None
    print(f"CIFAR-10 ready in {root / BATCHES_DIR}", flush=True)
    return root / BATCHES_DIR


def _not_found(root: Path, what_happened: str) -> str:
    return (f"no CIFAR-10 at {root}, and {what_happened}.\n"
            f"  Looked for: {_LAYOUTS}, in {root}\n"
            f"  (that folder comes from the CIFAR_ROOT environment variable, else data/cifar10; data.root=... overrides both).\n"
            f"  To fix: point CIFAR_ROOT=/path/to/cifar10 (or data.root=/path/to/cifar10) at a folder holding one of those\n"
            f"  layouts; or fetch {CIFAR10_URL} on a machine with internet and extract it into {root};\n"
            f"  or run again where that address can be reached (data.download=auto, the default, fetches it).")


def load_cifar10(root: str | Path, download: bool | str = "auto", url: str = CIFAR10_URL,
                 md5: str | None = CIFAR10_MD5) -> CifarArrays:
    """Load CIFAR-10 from `root`: the offline npz pair or torchvision's layout.

    download: "auto" fetches torchvision's archive into `root` when neither layout is there,
    "true" likewise (kept for torchvision's spelling), "false" never fetches. `url` / `md5` choose
    the archive (defaults: torchvision's source). Every failure raises an error naming the path.
    """
    mode = _download_mode(download)
    root = Path(root).expanduser()
    train_npz, test_npz = root / "cifar10_train.npz", root / "cifar10_test.npz"
    if train_npz.exists() or test_npz.exists():
        for p in (train_npz, test_npz):
            if not p.exists():
                raise DataRootError(f"CIFAR-10 folder {root} is incomplete: {p.name} is missing ({_LAYOUTS})")
        tr, te = _load_npz(train_npz), _load_npz(test_npz)
        for d, p in ((tr, train_npz), (te, test_npz)):
            if "x" not in d or "y" not in d:
                raise CorruptFileError(f"{p}: expected arrays 'x' and 'y', found {sorted(d)}")
            _check(d["x"], d["y"], str(p))
        exact = te.get("lossless")
        return CifarArrays(tr["x"], tr["y"].astype(np.int64), te["x"], te["y"].astype(np.int64),
                           None if exact is None else exact.astype(bool), f"npz:{root}")
    batches = root / BATCHES_DIR
    if not batches.is_dir():
        if mode == "false":
            raise DataRootError(_not_found(root.resolve(), "data.download=false does not fetch it"))
        batches = download_cifar10(root, url, md5)
    return read_cifar_batches(batches)


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
    """CIFAR-10 for Lightning.

    The primary evaluation set (per-epoch validation and the final ``test_*`` figures) is either
    the official test set (``eval_set="test"``, the standard protocol) or, ``eval_set="holdout"``,
    the training images ``holdout = [start, end)``, never trained on: training then uses the first
    ``train_subset`` images (default: ``start``), which must end at or before ``start``. The
    official test set stays available (:meth:`eval_arrays`) for figures reported beside it. Only
    final-epoch figures are reported.
    """

    task = "classification"
    num_classes = 10
    input_size = (3, 32, 32)

    def __init__(self, root: str, batch_size: int = 128, eval_batch_size: int = 512, download: bool | str = "auto",
                 train_subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                 device: str = "auto", channels_last: bool = False, url: str = CIFAR10_URL,
                 md5: str | None = CIFAR10_MD5, eval_set: str = "test", holdout: list[int] | None = None,
                 val_subset: int | None = None):
        super().__init__()
        # per-epoch monitoring on the first `val_subset` images of the primary set (cheap epochs); the
        # final figures (test_dataloader, eval_arrays) always use all of it
        if val_subset is not None and (isinstance(val_subset, bool) or not isinstance(val_subset, int) or val_subset < 1):
            raise ValueError(f"data.val_subset={val_subset!r}: must be a positive integer (the first N images of the "
                             f"primary evaluation set, evaluated after every epoch), or null for all of it")
        self.val_subset = val_subset
        self.root, self.download, self.url, self.md5 = root, download, url, md5
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.train_subset, self.test_subset, self.seed = train_subset, test_subset, seed
        self.device_pref, self.channels_last = device, channels_last
        if eval_set not in ("test", "holdout"):
            raise ValueError(f"data.eval_set={eval_set!r}: expected 'test' (the official test set) or 'holdout' "
                             f"(training images data.holdout=[start, end), never trained on)")
        if eval_set == "holdout":
            if not (isinstance(holdout, (list, tuple)) and len(holdout) == 2 and all(isinstance(v, int) for v in holdout)
                    and 0 < holdout[0] < holdout[1]):
                raise ValueError(f"data.holdout={holdout!r}: with data.eval_set=holdout it must be [start, end), "
                                 f"integers with 0 < start < end (training images held out for evaluation)")
            if train_subset is not None and train_subset > holdout[0]:
                raise ValueError(f"data.train_subset={train_subset} overlaps data.holdout={list(holdout)}: training "
                                 f"uses the first train_subset images, so it must be <= {holdout[0]}")
        self.eval_set, self.holdout = eval_set, (list(holdout) if holdout is not None else None)
        self.arrays: CifarArrays | None = None
        self.primary: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None

    @property
    def eval_set_name(self) -> str:
        """The primary evaluation set, as summary.json names it: 'test' or 'train[start:end]'."""
        return "test" if self.eval_set == "test" else f"train[{self.holdout[0]}:{self.holdout[1]}]"

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        a = load_cifar10(self.root, self.download, self.url, self.md5)
        n_train = len(a.train_x)
        if self.eval_set == "holdout" and self.holdout[1] > n_train:
            raise ValueError(f"data.holdout={self.holdout}: ends after the {n_train} training images at {self.root}")
        for key, n, size in (("train_subset", self.train_subset, n_train),
                             ("test_subset", self.test_subset, len(a.test_x))):
            if n is not None and not 1 <= n <= size:
                raise ValueError(f"data.{key}={n}: must be between 1 and {size} (the size of that split at "
                                 f"{self.root}), or null for all of it")
        if self.eval_set == "holdout":
            start, end = self.holdout
            px, py = a.train_x[start:end], a.train_y[start:end]
            if self.test_subset:
                px, py = px[: self.test_subset], py[: self.test_subset]
            self.primary = (px, py, None)  # training images: exact in every layout
            n = self.train_subset or start
            a.train_x, a.train_y = a.train_x[:n], a.train_y[:n]
        elif self.train_subset:
            a.train_x, a.train_y = a.train_x[: self.train_subset], a.train_y[: self.train_subset]
        if self.test_subset:
            a.test_x, a.test_y = a.test_x[: self.test_subset], a.test_y[: self.test_subset]
            a.test_exact = None if a.test_exact is None else a.test_exact[: self.test_subset]
        if self.eval_set == "test":
            self.primary = (a.test_x, a.test_y, a.test_exact)
        self.arrays = a

    def eval_arrays(self, which: str = "primary") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(images uint8 NHWC, labels, bit-exact mask or None) of the 'primary' evaluation set or
        the 'official' test set."""
        self.setup()
        if which == "primary":
            return self.primary
        if which == "official":
            a = self.arrays
            return a.test_x, a.test_y, a.test_exact
        raise ValueError(f"eval_arrays({which!r}): expected 'primary' or 'official'")

    def eval_loader(self, x: np.ndarray, y: np.ndarray, exact: np.ndarray | None = None,
                    device: torch.device | str = "cpu") -> "CifarLoader":
        """A single-process evaluation loader over given arrays (e.g. a corrupted copy)."""
        return CifarLoader(x, y, self.eval_batch_size, train=False, device=device, exact=exact,
                           channels_last=self.channels_last)

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

    def _primary_loader(self, n: int | None = None) -> CifarLoader:
        """The primary evaluation set (its first `n` images when given), on the training device."""
        rank, world = self._dist()
        x, y, exact = (a if a is None else a[:n] for a in self.primary)
        return CifarLoader(x, y, self.eval_batch_size, train=False, device=self._device(),
                           exact=exact, rank=rank, world_size=world, channels_last=self.channels_last)

    def test_dataloader(self) -> CifarLoader:
        return self._primary_loader()

    def val_dataloader(self) -> CifarLoader:
        """Per-epoch monitoring: the primary set, or its first ``val_subset`` images."""
        return self._primary_loader(self.val_subset)

    def calibration_batches(self, n: int):
        """Up to n training batches (augmented, epoch-seeded) for BatchNorm recalibration."""
        loader = self.train_dataloader()
        for i, batch in enumerate(loader):
            if i >= n:
                break
            yield batch[0]
