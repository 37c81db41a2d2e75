"""ImageNet (ILSVRC-2012) from an ImageFolder tree; and the subset and loader helpers that the
folder datasets (ImageNet, Cityscapes) share."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from src.data.errors import DataRootError, open_image, require_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

GET_IMAGENET = (
    "Get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
    "https://image-net.org/download-images (free account); untar the per-class train tars into "
    "train/<wnid>/, and sort the 50,000 val images into val/<wnid>/ with valprep.sh "
    "(https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh)."
)


def first_n(dataset: Dataset, n: int | None, order: Sequence[int] | None = None) -> Dataset:
    """The first `n` examples of `dataset` (in `order` if given); all of it when `n` is None."""
    if n is None:
        return dataset
    size = len(dataset)
    if not 1 <= n <= size:
        raise ValueError(f"a subset of {n} examples was requested from a split of {size}")
    return Subset(dataset, list(order if order is not None else range(size))[:n])


def loader(dataset: Dataset, batch_size: int, num_workers: int, pin_memory: bool,
           shuffle_seed: int | None = None, trainer: pl.Trainer | None = None) -> DataLoader:
    """A DataLoader; with `shuffle_seed`, a training loader.

    Training order is a function of (seed, epoch) -- Lightning calls the sampler's set_epoch -- so a
    resumed run sees the batches an uninterrupted one would, and each DDP rank reads its own shard.
    The last partial batch is dropped (BatchNorm cannot train on one example) unless it is the
    only one.
    """
    sampler = None
    if shuffle_seed is not None:
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        # The sampler shuffles epoch e with seed + e: spread the seeds so that two runs never share
        # an epoch's order.
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=shuffle_seed * 1_000_000)
    return DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=sampler is not None and len(sampler) > batch_size,
    )


def class_interleaved(targets: Sequence[int]) -> list[int]:
    """Indices ordered first example of every class, then second, ...; `targets` sorted by class
    (as ImageFolder lists them). Its first N examples are balanced and do not depend on a seed."""
    t = np.asarray(targets)
    rank_in_class = np.arange(len(t)) - np.searchsorted(t, t)
    return np.lexsort((t, rank_in_class)).tolist()


class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet in ImageFolder layout: root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG.

    Batches are (x float32 NCHW normalised with ImageNet mean/std, y int64). Train:
    RandomResizedCrop + flip; val/test (both the val split): Resize(val_resize) +
    CenterCrop(image_size).
    `train_subset` / `test_subset` keep the first N examples in class-interleaved order.
    `num_classes` is set by setup() from the class folders of train/.
    """

    task = "classification"
    num_classes: int

    def __init__(self, root: str, batch_size: int = 256, num_workers: int = 8,
                 image_size: int = 224, val_resize: int = 256, train_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, pin_memory: bool = True):
        super().__init__()
        self.root = Path(root)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.train_subset, self.test_subset, self.seed = train_subset, test_subset, seed
        to_input = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()]
        self.train_transform = v2.Compose(
            [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), *to_input])
        self.val_transform = v2.Compose(
            [v2.Resize(val_resize), v2.CenterCrop(image_size), *to_input])
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        require_dir(self.root, "an ImageNet folder holding train/ and val/", GET_IMAGENET)
        train = self._image_folder("train", self.train_transform)
        val = self._image_folder("val", self.val_transform)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise DataRootError(
                f"{self.root}: train/ and val/ hold different class folders (only in train/: "
                f"{only_train[:5]}{' ...' if len(only_train) > 5 else ''}; only in val/: "
                f"{only_val[:5]}{' ...' if len(only_val) > 5 else ''}); expected the same <wnid> "
                f"folders in both. {GET_IMAGENET}")
        self.num_classes = len(train.classes)
        self.train_set = first_n(train, self.train_subset, class_interleaved(train.targets))
        self.val_set = first_n(val, self.test_subset, class_interleaved(val.targets))

    def _image_folder(self, split: str, transform: v2.Transform) -> ImageFolder:
        path = self.root / split
        what = f"one folder of JPEG images per class ({split}/<wnid>/*.JPEG)"
        require_dir(path, what, GET_IMAGENET)
        try:
            return ImageFolder(str(path), transform, loader=open_image)
        except FileNotFoundError as e:  # no class folders, or a class folder without images
            raise DataRootError(f"{path}: {e} Expected {what}. {GET_IMAGENET}") from e

    def train_dataloader(self) -> DataLoader:
        return loader(self.train_set, self.batch_size, self.num_workers, self.pin_memory,
                      shuffle_seed=self.seed, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
