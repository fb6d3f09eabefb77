"""A LightningDataModule for small image-classification sets held in memory as tensors.

The sets here (digits, MNIST, Fashion-MNIST, CIFAR-10) fit in a few hundred MB, so each split is loaded once,
normalized once, and served from a TensorDataset. That is several times faster than decoding a PIL image per
sample on 2 cores, and it makes worker processes unnecessary: ``num_workers`` defaults to 0 (no inter-process
copies); raise it only for sets whose loading per sample is expensive.

The training loader resumes exactly: its order is a pure function of (seed, epoch) (:class:`EpochShuffleSampler`)
and a checkpoint written mid-epoch resumes at the next batch of that epoch not yet trained on
(:class:`ResumableDataLoader`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, Subset, TensorDataset, random_split


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


class ResumableBatchSampler(BatchSampler):
    """Batches of ``sampler``'s order that can begin, once, after the batches a checkpoint says were trained on.

    The skip happens here, on indices, so skipped batches are never loaded; and when the epoch's iteration
    starts (the first batch is asked for, after Lightning's ``set_epoch``), so it applies only to the epoch it
    was saved in. Under DDP Lightning rebuilds it around its distributed sampler with the same arguments, and
    each rank skips its own batches.

    Args:
        sampler: the order of the samples (its ``epoch`` attribute, when it has one, names the epoch).
        batch_size: samples per batch.
        drop_last: drop the last, smaller batch.

    Example:
        >>> batches = ResumableBatchSampler(EpochShuffleSampler(10, seed=0), batch_size=4)
        >>> batches.resume_at(epoch=0, batches=2)
        >>> [len(b) for b in batches], [len(b) for b in batches]  # the skip is used once
        ([2], [4, 4, 2])
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self._resume: tuple[int | None, int] | None = None

    def resume_at(self, epoch: int | None, batches: int) -> None:
        """Start the next iteration of epoch ``epoch`` after its first ``batches`` batches."""
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 0:
            raise ValueError(f"batches must be an integer >= 0, got {batches!r}")
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[list[int]]:  # a generator: nothing runs until the first batch is asked for
        resume, self._resume = self._resume, None
        batches = super().__iter__()
        if resume is not None and resume[0] == sampler_epoch(self.sampler):
            batches = itertools.islice(batches, resume[1], None)
        yield from batches


def sampler_epoch(sampler: Any) -> int | None:
    """The epoch a sampler's order is for (``set_epoch``), or ``None`` for a sampler without epochs."""
    epoch = getattr(sampler, "epoch", None)
    return int(epoch) if epoch is not None else None


class ResumableDataLoader(DataLoader):
    """A training DataLoader that a checkpoint written mid-epoch resumes at its next batch not trained on.

    It follows Lightning's ``_Stateful`` protocol: the fit loop saves :meth:`state_dict` in every checkpoint
    (``loops.fit_loop.state_dict.combined_loader``) and, when a fit resumes within an epoch, calls
    :meth:`load_state_dict` before it iterates. The state is the epoch and the number of its batches trained on,
    which ``batches_trained`` reads from the trainer's progress: what the loader has yielded is no measure,
    since Lightning's data fetcher and worker processes read ahead. Batches come from a
    :class:`ResumableBatchSampler` (``batch_sampler=``), which skips the trained batches without loading them.

    Args:
        *args: ``DataLoader``'s.
        **kwargs: ``DataLoader``'s, with ``batch_sampler`` a :class:`ResumableBatchSampler`.
        batches_trained: returns how many batches of the current epoch have been trained on (``None``: 0).

    Raises:
        TypeError: ``batch_sampler`` is not a :class:`ResumableBatchSampler`.
        ValueError: (:meth:`load_state_dict`) the state was saved with another batch size or number of samples,
            whose batches are not these.
    """

    def __init__(self, *args: Any, batches_trained: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, ResumableBatchSampler):
            raise TypeError(f"ResumableDataLoader needs batch_sampler=ResumableBatchSampler(...), got "
                            f"{type(self.batch_sampler).__name__}")
        # Given a batch sampler, DataLoader leaves `sampler` a SequentialSampler it never uses (and refuses to
        # set it); under DDP Lightning builds the distributed sampler from `sampler`, which must be the real order.
        object.__setattr__(self, "sampler", self.batch_sampler.sampler)
        self.batches_trained = batches_trained

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batch_sampler
        trained = self.batches_trained() if self.batches_trained is not None else 0
        return {"epoch": sampler_epoch(sampler.sampler), "batches": trained, "batch_size": sampler.batch_size,
                "samples": len(sampler.sampler)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sampler = self.batch_sampler
        saved = (state_dict["batch_size"], state_dict["samples"])
        if saved != (sampler.batch_size, len(sampler.sampler)):
            raise ValueError(f"the checkpoint was written mid-epoch by a loader of batch_size={saved[0]} over "
                             f"{saved[1]} samples; this one has batch_size={sampler.batch_size} over "
                             f"{len(sampler.sampler)}, so the epoch cannot go on where it stopped. Resume with the "
                             "same data settings, or from a checkpoint written at an epoch's end")
        sampler.resume_at(state_dict["epoch"], int(state_dict["batches"]))


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
        mean: per-channel normalization: the means subtracted.
        std: per-channel normalization: the standard deviations divided by.
        num_workers: DataLoader workers (0 serves batches from the main process).
        pad: background (zero) pixels added on every side of each image before normalization (MNIST's 28x28
            padded by 2 is the 32x32 that LeNet-5 and library networks take); ``input_shape`` is the padded shape.
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
        pad: int = 0,
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
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad must be an integer >= 0 (pixels on every side), got {pad!r}")
        self.pad = pad
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
        if self.pad:
            images = torch.nn.functional.pad(images, [self.pad] * 4)
        split = "train" if train else "test"
        if list(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input_shape is {self.input_shape} but the {split} images are {list(images.shape[1:])}"
                + (f" once padded by {self.pad}" if self.pad else "")
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

    def _workers(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}

    def _loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, **self._workers())

    def train_dataloader(self) -> ResumableDataLoader:
        # The shuffle seed is the run's seed (torch.initial_seed() after seed_everything).
        sampler = EpochShuffleSampler(len(self.train_set), torch.initial_seed())
        # Lightning creates the epoch's iterator before its set_epoch call, and worker processes draw their first
        # indices right then: a resumed fit must find the sampler at the epoch it resumes, not at 0.
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return ResumableDataLoader(self.train_set, batch_sampler=ResumableBatchSampler(sampler, self.batch_size),
                                   batches_trained=self._batches_trained, **self._workers())

    def _batches_trained(self) -> int:
        """Batches of the current epoch trained on (the training step ran), by the trainer's count."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
