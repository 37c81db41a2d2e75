"""What the datasets read from image files (ImageNet, Cityscapes) share: subsets, loaders with a
(seed, epoch)-determined, DDP-sharded training order, and the DataModule base."""

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


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


class FileDataModule(pl.LightningDataModule):
    """Loaders of a dataset read from image files; a subclass's setup() sets `train_set` and
    `val_set` (validation and test both read the val split)."""

    def __init__(self, root: str, batch_size: int, num_workers: int, train_subset: int | None,
                 test_subset: int | None, seed: int, pin_memory: bool):
        super().__init__()
        self.root = Path(root)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.train_subset, self.test_subset, self.seed = train_subset, test_subset, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def train_dataloader(self) -> DataLoader:
        return loader(self.train_set, self.batch_size, self.num_workers, self.pin_memory,
                      shuffle_seed=self.seed, trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        return loader(self.val_set, self.batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def calibration_batches(self, n: int) -> Iterator[torch.Tensor]:
        """The inputs of up to n augmented training batches, for BatchNorm recalibration."""
        return (x for x, _ in itertools.islice(self.train_dataloader(), n))
