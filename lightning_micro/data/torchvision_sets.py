"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes.

``prepare_data`` asks torchvision to download into ``data_dir`` (it skips files that are already there and
pass its checksums). Without network and without the files, the run stops with one message that says where
the files go, before any training step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision

from lightning_micro.data.image_datamodule import ImageDataModule


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not under ``data_dir`` and could not be downloaded."""


def default_data_dir() -> str:
    """``$LM_DATA_DIR`` if set, else ``./data``."""
    return os.environ.get("LM_DATA_DIR", "data")


class TorchvisionDataModule(ImageDataModule):
    """Base for the torchvision sets; subclasses set :attr:`dataset_class` and :attr:`expected_files`.

    Args:
        data_dir: folder that holds ``<DatasetName>/`` in torchvision's layout; must exist.
        download: let torchvision fetch missing files (needs network).
        Others as :class:`ImageDataModule`.
    """

    dataset_class: type = torchvision.datasets.MNIST
    expected_files: tuple[str, ...] = ()

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Sequence[float] = (0.1307,),
        std: Sequence[float] = (0.3081,),
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(input_shape, num_classes, batch_size, val_size, split_seed, mean, std, num_workers)
        data_dir = Path(default_data_dir() if data_dir is None else data_dir)
        if not data_dir.is_dir():
            raise ValueError(
                f"data_dir {str(data_dir)!r} is not an existing directory (resolved: {data_dir.resolve()}). "
                "Create it, or point data.data_dir or the LM_DATA_DIR environment variable at the folder "
                f"that holds {self.dataset_class.__name__}/"
            )
        self.data_dir = data_dir
        self.download = download

    @property
    def dataset_folder(self) -> Path:
        return self.data_dir / self.dataset_class.__name__

    def _open(self, train: bool, download: bool):
        return self.dataset_class(str(self.data_dir), train=train, download=download)

    def prepare_data(self) -> None:
        for train in (True, False):
            try:
                self._open(train, download=self.download)
            except (RuntimeError, OSError) as err:
                files = ", ".join(self.expected_files)
                raise DatasetNotFoundError(
                    f"data.data_dir: {self.dataset_class.__name__} is not under {self.data_dir.resolve()} and "
                    f"could not be downloaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
                    f"Put its files ({files}) into {self.dataset_folder.resolve()}/ in torchvision's layout, or "
                    "point data.data_dir / LM_DATA_DIR at the folder that holds them."
                ) from err

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = self._open(train, download=False)
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # HWC -> CHW
        return images.float().div(255.0), torch.as_tensor(np.asarray(dataset.targets)).long()


class MNISTDataModule(TorchvisionDataModule):
    """MNIST: 60,000 training and 10,000 test 28x28 grey digits."""

    dataset_class = torchvision.datasets.MNIST
    expected_files = tuple(name for name, _ in torchvision.datasets.MNIST.resources)


class FashionMNISTDataModule(TorchvisionDataModule):
    """Fashion-MNIST: MNIST's format and sizes, ten kinds of clothing."""

    dataset_class = torchvision.datasets.FashionMNIST
    expected_files = tuple(name for name, _ in torchvision.datasets.FashionMNIST.resources)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images."""

    dataset_class = torchvision.datasets.CIFAR10
    expected_files = ("cifar-10-python.tar.gz",)

    @property
    def dataset_folder(self) -> Path:
        return self.data_dir

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        num_workers: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__(
            data_dir, input_shape, num_classes, batch_size, val_size, split_seed, mean, std, num_workers, download
        )
