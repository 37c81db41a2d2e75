"""Datasets and loaders (Lightning DataModules)."""

from .cifar import CIFAR10DataModule, CifarLoader, load_cifar10

__all__ = ["CIFAR10DataModule", "CifarLoader", "load_cifar10"]
