"""DataModules: real digits and MNIST, synthetic files in torchvision's format for the sets we lack here."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from lightning_micro.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from tests.helpers.config import mnist_dir


def test_digits_splits_are_disjoint_and_fixed():
    dm = DigitsDataModule(val_size=180, test_size=360)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1257, 180, 360)
    again = DigitsDataModule(val_size=180, test_size=360)
    again.setup()
    assert torch.equal(dm.test_set.tensors[0], again.test_set.tensors[0])
    assert dm.train_set.indices == again.train_set.indices
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.long


def test_mnist_loads_the_real_files():
    dm = MNISTDataModule(data_dir=mnist_dir(), val_size=5000)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    images = dm.test_set.tensors[0]
    assert images.shape == (10000, 1, 28, 28)
    assert abs(float(images.mean())) < 0.05 and abs(float(images.std()) - 1.0) < 0.05  # normalized


def test_missing_dataset_says_where_the_files_go(tmp_path):
    dm = MNISTDataModule(data_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert message.startswith("data.data_dir: MNIST is not under")
    assert str(tmp_path / "MNIST") in message and "train-images-idx3-ubyte.gz" in message


def test_non_existent_data_dir_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not an existing directory"):
        MNISTDataModule(data_dir=tmp_path / "nope")


def test_input_shape_must_match_the_data():
    dm = DigitsDataModule(input_shape=[1, 28, 28])
    with pytest.raises(ValueError, match=r"input_shape is \[1, 28, 28\] but the train images are \[1, 8, 8\]"):
        dm.setup("fit")


def test_padding_adds_background_on_every_side_before_normalizing():
    dm = MNISTDataModule(data_dir=mnist_dir(), input_shape=[1, 32, 32], pad=2)
    dm.prepare_data()
    dm.setup("test")
    plain = MNISTDataModule(data_dir=mnist_dir())
    plain.setup("test")
    padded, images = dm.test_set.tensors[0], plain.test_set.tensors[0]
    assert padded.shape == (10000, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], images)
    background = (0 - 0.1307) / 0.3081
    assert torch.allclose(padded[:, :, :2], torch.full_like(padded[:, :, :2], background))
    with pytest.raises(ValueError, match=r"input_shape is \[1, 28, 28\] but the test images are \[1, 32, 32\] once "
                                         r"padded by 2"):
        MNISTDataModule(data_dir=mnist_dir(), pad=2).setup("test")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"pad": -1}, "pad must be an integer >= 0"), ({"pad": 1.5}, "pad must be an integer >= 0"),
     ({"batch_size": 0}, "batch_size"), ({"mean": [0.1, 0.2]}, "one value per channel"), ({"std": [0.0]}, "std")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)


def _write_idx(path, array: np.ndarray) -> None:
    magic = 0x801 if array.ndim == 1 else 0x803
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    dm = FashionMNISTDataModule(data_dir=tmp_path, val_size=10, batch_size=16)
    dm.prepare_data()  # finds the files: no download attempted
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)


def test_cifar10_reads_torchvision_layout(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def dump(name, payload):
        with open(folder / name, "wb") as handle:
            pickle.dump(payload, handle)
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list = [dump(f"data_batch_{i}", {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                                             "labels": rng.integers(0, 10, 8).tolist()}) for i in range(1, 6)]
    test_list = [dump("test_batch", {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                                     "labels": rng.integers(0, 10, 6).tolist()})]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    # torchvision checks the official checksums; point it at the synthetic files' ones instead.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta",
                        {"filename": meta_name, "key": "label_names", "md5": meta_md5})
    dm = CIFAR10DataModule(data_dir=tmp_path, val_size=10, batch_size=4)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 6)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_gzip_only_files_are_enough_for_mnist(tmp_path):
    """The shared copy holds only the .gz files; torchvision extracts them without any network call."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        source = mnist_dir() / "MNIST" / "raw" / f"{name}.gz"
        (raw / f"{name}.gz").write_bytes(source.read_bytes())
    MNISTDataModule(data_dir=tmp_path).prepare_data()
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == len(gzip.open(raw / "t10k-images-idx3-ubyte.gz").read())


def _labels(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


def test_training_loader_resumes_within_the_saved_epoch_only():
    dm = DigitsDataModule()
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.batch_sampler.sampler.set_epoch(1)
    epoch_1 = _labels(loader)
    state = {"epoch": 1, "batches": 3, "batch_size": 64, "samples": 1257}
    loader.load_state_dict(state)
    assert _labels(loader) == epoch_1[3:]  # the rest of the saved epoch, in its order
    assert _labels(loader) == epoch_1  # then whole epochs again
    loader.load_state_dict({**state, "epoch": 0})  # saved in another epoch: nothing to skip in this one
    assert _labels(loader) == epoch_1
    assert loader.state_dict() == {"epoch": 1, "batches": 0, "batch_size": 64, "samples": 1257}  # outside a fit


def test_training_loader_refuses_the_state_of_other_batches():
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    with pytest.raises(ValueError, match="batch_size=64 over 1257 samples; this one has batch_size=32 over 1257"):
        dm.train_dataloader().load_state_dict({"epoch": 1, "batches": 3, "batch_size": 64, "samples": 1257})
