"""Datasets and loaders (Lightning DataModules)."""

from .cifar import CIFAR10DataModule, CifarLoader, load_cifar10
from .cityscapes import LABEL_TO_TRAIN_ID, CityscapesDataModule
from .errors import CorruptFileError, DataRootError
from .fixtures import make_cityscapes_fixture, make_imagenet_fixture
from .imagenet import ImageNetDataModule

__all__ = ["CIFAR10DataModule", "CifarLoader", "load_cifar10", "ImageNetDataModule", "CityscapesDataModule",
           "LABEL_TO_TRAIN_ID", "DataRootError", "CorruptFileError", "make_imagenet_fixture",
           "make_cityscapes_fixture"]
