"""prepare_data under the conditions of real sweeps: runs started together, read-only data folders, damaged files.

The MNIST tests copy the real ``.gz`` files into ``tmp_path`` (the shared copy is never written to); the other
sets use small synthetic files in torchvision's format.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import pickle
import shutil
import stat
import struct
import tarfile
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from lightning_micro.data import (
    CIFAR10DataModule,
    CorruptDatasetFileError,
    DatasetError,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from lightning_micro.data.torchvision_sets import idx_problem, unpack_cache_for
from tests.helpers.config import mnist_dir

MNIST_GZ = tuple(name for name, _ in torchvision.datasets.MNIST.resources)


def _fresh_mnist_copy(tmp_path: Path) -> Path:
    """A data folder holding only MNIST's four ``.gz`` files, as the shared copy does."""
    source = mnist_dir() / "MNIST" / "raw"
    missing = [name for name in MNIST_GZ if not (source / name).is_file()]
    if missing:
        pytest.skip(f"the .gz files {missing} are not in {source} (set LM_DATA_DIR to a folder that has them)")
    data_dir = tmp_path / "data"
    (data_dir / "MNIST" / "raw").mkdir(parents=True)
    for name in MNIST_GZ:
        shutil.copyfile(source / name, data_dir / "MNIST" / "raw" / name)
    return data_dir


def _test_split_from_gz(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split decoded straight from the archives, independently of the code under test."""
    raw = data_dir / "MNIST" / "raw"
    images = np.frombuffer(gzip.decompress((raw / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    labels = np.frombuffer(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    images = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()).float().div(255.0)
    return images, torch.from_numpy(labels.copy()).long()


def _digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry's mtime, size and mode; a folder's mtime changes when anything is created in it, even briefly."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size, path.stat().st_mode)
        for path in [folder, *sorted(folder.rglob("*"))]
    }


@contextmanager
def _read_only(folder: Path):
    """chmod the tree read-only for everyone, as a shared dataset folder is; restored so tmp_path can be cleaned."""
    paths = [folder, *folder.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        for path in paths:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _prepare_and_load_test_split(data_dir: Path, start, results) -> None:
    """One run, in its own process: wait for the others, then prepare and load as a run does."""
    try:
        torch.set_num_threads(1)
        start.wait(timeout=30)
        dm = MNISTDataModule(data_dir=data_dir)
        dm.prepare_data()
        results.put(("ok", _digest(*dm.load_split(train=False))))
    except BaseException:  # noqa: B036 - everything must reach the parent, or it waits for nothing
        results.put(("error", traceback.format_exc()))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (Linux)")
def test_six_runs_started_together_on_one_fresh_folder_all_load_the_same_data(tmp_path):
    data_dir = _fresh_mnist_copy(tmp_path)
    runs = 6
    context = multiprocessing.get_context("fork")  # real processes, without re-importing torch six times
    start, results = context.Barrier(runs), context.Queue()
    processes = [context.Process(target=_prepare_and_load_test_split, args=(data_dir, start, results))
                 for _ in range(runs)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    errors = [detail for status, detail in outcomes if status == "error"]
    assert not errors, errors[0]
    assert {detail for _, detail in outcomes} == {_digest(*_test_split_from_gz(data_dir))}
    raw = data_dir / "MNIST" / "raw"
    for name in MNIST_GZ:  # the training files, which no run loaded, are whole too
        assert (raw / name.removesuffix(".gz")).read_bytes() == gzip.decompress((raw / name).read_bytes())
    assert sorted(p.name for p in raw.iterdir()) == sorted([*MNIST_GZ, *(n.removesuffix(".gz") for n in MNIST_GZ)])


def test_read_only_data_folder_is_never_written_and_loads_from_the_cache(tmp_path, monkeypatch):
    data_dir = _fresh_mnist_copy(tmp_path)
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    expected = _digest(*_test_split_from_gz(data_dir))
    with _read_only(data_dir):
        before = _snapshot(data_dir)
        dm = MNISTDataModule(data_dir=data_dir)
        dm.prepare_data()
        dm.prepare_data()  # a second run finds everything in the cache
        loaded = _digest(*dm.load_split(train=False))
        assert _snapshot(data_dir) == before
    cache = unpack_cache_for(data_dir)
    assert dm.unpacked_root() == cache and cache.is_relative_to(tmp_path / "cache")
    assert loaded == expected
    unpacked = sorted(p.name for p in (cache / "MNIST" / "raw").iterdir())
    assert unpacked == sorted(n.removesuffix(".gz") for n in MNIST_GZ)


def test_read_only_folder_without_the_files_says_where_they_go(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with _read_only(data_dir):
        with pytest.raises(DatasetNotFoundError, match=r"^data\.data_dir: MNIST is not under") as info:
            MNISTDataModule(data_dir=data_dir).prepare_data()
        assert list(data_dir.iterdir()) == []
    assert f"into {data_dir / 'MNIST'}/" in str(info.value)


def test_two_data_folders_of_one_name_never_share_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    assert unpack_cache_for(first) != unpack_cache_for(second)
    assert unpack_cache_for(first) == unpack_cache_for(tmp_path / "a" / "." / "data")  # keyed by the absolute path
    assert unpack_cache_for(first).parent == tmp_path / "cache" / "unpacked"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "flipped-byte"])
def test_damaged_gz_names_the_file_in_one_line(tmp_path, damage):
    data_dir = _fresh_mnist_copy(tmp_path)
    raw = data_dir / "MNIST" / "raw"
    damaged = raw / "train-images-idx3-ubyte.gz"
    damage(damaged)
    with pytest.raises(CorruptDatasetFileError) as info:
        MNISTDataModule(data_dir=data_dir).prepare_data()
    message = str(info.value)
    assert isinstance(info.value, DatasetError) and "\n" not in message
    assert message.startswith(f"data.data_dir: {damaged} is truncated/corrupt: ") and message.endswith("; replace it")
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_GZ)  # nothing half-written left behind


def test_truncated_unpacked_file_names_itself_and_its_archive(tmp_path):
    """A file cut short (say by a run killed while torchvision unpacked it, before this fix) is not read."""
    data_dir = _fresh_mnist_copy(tmp_path)
    raw = data_dir / "MNIST" / "raw"
    short = raw / "t10k-labels-idx1-ubyte"
    short.write_bytes(gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())[:5000])
    with pytest.raises(CorruptDatasetFileError) as info:
        MNISTDataModule(data_dir=data_dir).prepare_data()
    assert str(info.value) == (
        f"data.data_dir: {short} is truncated/corrupt: 5,000 bytes, but its header (10000 values) needs 10,008; "
        f"delete it to unpack it again from {raw / 't10k-labels-idx1-ubyte.gz'}"
    )


@pytest.mark.parametrize(
    ("header", "size", "dims", "problem"),
    [
        (struct.pack(">IIII", 0x803, 2, 28, 28), 16 + 2 * 784, 3, None),
        (struct.pack(">II", 0x801, 10), 18, 1, None),
        (b"", 0, 1, "only 0 bytes, shorter than a 4-byte magic number"),
        (b"\x1f\x8b\x08\x08", 9_912_422, 3, "magic number 0x1f8b0808, expected 0x00000803 (idx3 of unsigned bytes)"),
        (struct.pack(">II", 0x803, 2), 8, 3, "only 8 bytes, shorter than its 16-byte header"),
        (struct.pack(">IIII", 0x803, 2, 28, 28), 1000, 3,
         "1,000 bytes, but its header (2 x 28 x 28 values) needs 1,584"),
    ],
    ids=["images", "labels", "empty", "still-gzipped", "short-header", "short-body"],
)
def test_idx_problem(header, size, dims, problem):
    assert idx_problem(header, size, dims) == problem


def _write_gz_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_gz_in_a_read_only_folder_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    raw = data_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, (20, 28, 28))
    _write_gz_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28)))
    _write_gz_idx(raw / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 60))
    _write_gz_idx(raw / "t10k-images-idx3-ubyte.gz", test_images)
    _write_gz_idx(raw / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    with _read_only(data_dir):
        before = _snapshot(data_dir)
        dm = FashionMNISTDataModule(data_dir=data_dir, val_size=10, batch_size=16)
        dm.prepare_data()
        dm.setup()
        assert _snapshot(data_dir) == before
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    assert torch.equal(dm.load_split(train=False)[0], torch.from_numpy(test_images).float().div(255.0).unsqueeze(1))
    assert (unpack_cache_for(data_dir) / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def _write_cifar_tar_gz(data_dir: Path, monkeypatch) -> None:
    """A tiny ``cifar-10-python.tar.gz``; torchvision is pointed at its batches' checksums."""
    staging = data_dir.parent / "cifar-staging" / "cifar-10-batches-py"
    staging.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name, payload):
        (staging / name).write_bytes(pickle.dumps(payload))
        return [name, hashlib.md5((staging / name).read_bytes()).hexdigest()]

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}

    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [dump(f"data_batch_{i}", batch(8)) for i in range(1, 6)])
    monkeypatch.setattr(cifar, "test_list", [dump("test_batch", batch(6))])
    meta_name, meta_md5 = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(cifar, "meta", {"filename": meta_name, "key": "label_names", "md5": meta_md5})
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(staging, arcname="cifar-10-batches-py")


def test_cifar10_tar_gz_in_a_read_only_folder_is_extracted_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_cifar_tar_gz(data_dir, monkeypatch)
    with _read_only(data_dir):
        before = _snapshot(data_dir)
        dm = CIFAR10DataModule(data_dir=data_dir, val_size=10, batch_size=4)
        dm.prepare_data()
        dm.setup()
        assert _snapshot(data_dir) == before
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (30, 10, 6)
    assert (unpack_cache_for(data_dir) / "cifar-10-batches-py" / "test_batch").is_file()


def test_truncated_cifar10_tar_gz_names_the_file(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_cifar_tar_gz(data_dir, monkeypatch)
    archive = data_dir / "cifar-10-python.tar.gz"
    _truncate(archive)
    with pytest.raises(CorruptDatasetFileError) as info:
        CIFAR10DataModule(data_dir=data_dir).prepare_data()
    message = str(info.value)
    assert message.startswith(f"data.data_dir: {archive} is truncated/corrupt: ") and message.endswith("; replace it")
    left = [p.name for p in data_dir.iterdir()]
    assert "cifar-10-batches-py" not in left and not [name for name in left if name.endswith(".part")]
