"""A LightningDataModule for small image-classification sets held in memory as tensors.

The sets here (digits, MNIST, Fashion-MNIST, CIFAR-10) fit in a few hundred MB, so each split is loaded once,
normalized once, and served from a TensorDataset. That is several times faster than decoding a PIL image per
sample on 2 cores, and it makes worker processes unnecessary: ``num_workers`` defaults to 0 (no inter-process
copies); raise it only for sets whose loading per sample is expensive.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, Subset, TensorDataset, random_split


class EpochShuffleSampler(Sampler[int]):
    """A random order that is a pure function of ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from a checkpoint sees the same
    batches as one that never stopped (with a plain ``RandomSampler`` the order depends on the global RNG state,
    which checkpoints do not hold).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed + 1_000_003 * self.epoch) % 2**63)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ImageDataModule(L.LightningDataModule):
    """Train / validation / test loaders over in-memory image tensors.

    Subclasses implement :meth:`load_split`, returning ``(images, labels)`` with images as a float tensor of shape
    ``(N, C, H, W)`` scaled to [0, 1]. The validation set is carved from the training set with a fixed seed;
    the test set is the dataset's own test split.

    Args:
        input_shape: ``[C, H, W]`` of one image; checked against the data when it is loaded. Models read it
            through the config (``${data.input_shape}``).
        num_classes: number of classes; checked against the labels.
        batch_size: training batch size (evaluation uses the same).
        val_size: images held out of the training split for validation.
        split_seed: seed of the train/validation split, independent of the run's ``seed``.
        mean, std: per-channel normalization.
        num_workers: DataLoader workers (0 serves batches from the main process).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        input_shape = [int(v) for v in input_shape]
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be [channels, height, width] of positive ints, got {input_shape}")
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("val_size", val_size)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        channels = input_shape[0]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got mean={list(mean)} std={list(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.num_workers = num_workers
        self.train_set: Subset | None = None
        self.val_set: Subset | None = None
        self.test_set: TensorDataset | None = None

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, C, H, W)`` in [0, 1] and integer labels ``(N,)`` of the training or the test split."""
        raise NotImplementedError

    def _tensor_dataset(self, train: bool) -> TensorDataset:
        images, labels = self.load_split(train)
        split = "train" if train else "test"
        if list(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input_shape is {self.input_shape} but the {split} images are {list(images.shape[1:])}"
            )
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"num_classes is {self.num_classes} but the {split} labels go up to {int(labels.max())}")
        images = (images.float() - self.mean) / self.std
        return TensorDataset(images.contiguous(), labels.long())

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self._tensor_dataset(train=True)
            if self.val_size >= len(full):
                raise ValueError(f"val_size={self.val_size} leaves no training data ({len(full)} images)")
            generator = torch.Generator().manual_seed(self.split_seed)
            self.train_set, self.val_set = random_split(
                full, [len(full) - self.val_size, self.val_size], generator=generator
            )
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._tensor_dataset(train=False)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        # The shuffle seed is the run's seed (torch.initial_seed() after seed_everything).
        sampler = EpochShuffleSampler(len(dataset), torch.initial_seed()) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
