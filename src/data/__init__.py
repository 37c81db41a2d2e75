"""Datasets and loaders (Lightning DataModules)."""

from .cifar import CIFAR10DataModule, CifarLoader, download_cifar10, load_cifar10, read_cifar_batches
from .cityscapes import LABEL_TO_TRAIN_ID, CityscapesDataModule
from .errors import CorruptFileError, DataRootError
from .fixtures import make_cifar10_archive, make_cifar10_fixture, make_cityscapes_fixture, make_imagenet_fixture
from .imagenet import ImageNetDataModule

__all__ = ["CIFAR10DataModule", "CifarLoader", "load_cifar10", "download_cifar10", "read_cifar_batches",
           "make_cifar10_fixture", "make_cifar10_archive", "ImageNetDataModule", "CityscapesDataModule",
           "LABEL_TO_TRAIN_ID", "DataRootError", "CorruptFileError", "make_imagenet_fixture",
           "make_cityscapes_fixture"]
