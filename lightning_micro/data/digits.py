"""scikit-learn's bundled 8x8 handwritten digits: the embedded default set, no download needed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_micro.data.image_datamodule import ImageDataModule


class DigitsDataModule(ImageDataModule):
    """The UCI 8x8 digits (1,797 images, 10 classes) shipped inside scikit-learn.

    The set has no official test split, so one is carved off with a fixed seed (``test_size`` images, never
    seen in training or validation); validation is then carved from the rest.

    Example:
        >>> dm = DigitsDataModule(input_shape=[1, 8, 8], num_classes=10, val_size=180, test_size=360)
        >>> dm.setup("fit"); len(dm.train_set)
        1257
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        batch_size: int = 64,
        val_size: int = 180,
        test_size: int = 360,
        split_seed: int = 0,
        mean: Sequence[float] = (0.3053,),
        std: Sequence[float] = (0.3760,),
        num_workers: int = 0,
        pad: int = 0,
    ) -> None:
        super().__init__(input_shape, num_classes, batch_size, val_size, split_seed, mean, std, num_workers, pad)
        if not isinstance(test_size, int) or test_size < 1:
            raise ValueError(f"test_size must be a positive integer, got {test_size!r}")
        self.test_size = test_size

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images).float().div(16.0).unsqueeze(1)  # pixel values are 0..16
        labels = torch.from_numpy(bunch.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        chosen = order[self.test_size :] if train else order[: self.test_size]
        return images[chosen], labels[chosen]
