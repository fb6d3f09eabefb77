"""DataModules, chosen with ``data=<name>``: digits (embedded default), mnist, fashion_mnist, cifar10."""

from lightning_micro.data.digits import DigitsDataModule
from lightning_micro.data.image_datamodule import ImageDataModule
from lightning_micro.data.torchvision_sets import (
    CIFAR10DataModule,
    CorruptDatasetFileError,
    DatasetError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "CorruptDatasetFileError",
    "DatasetError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "TorchvisionDataModule",
]
